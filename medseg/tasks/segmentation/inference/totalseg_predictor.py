"""A TotalSegmentator task (medseg.totalsegmentator_folder) predicted as TotalSegmentator 2.18 does,
so its labels are TotalSegmentator's: in NIfTI's (x, y, z) voxel order the image is reoriented to
the closest RAS axes, resampled to the model's spacing (linear, edges repeated, then truncated to
integers, as CT values are), segmented by each part (nnU-Net v2 folders run by medseg's predictor,
without mirroring, with the task's window step), the parts' labels merged in their order onto the
task's values by class name, resampled back (nearest) and reoriented to the input's axes.
Tasks that crop first (e.g. lung_vessels) and ``--roi-subset`` run a rough model of the whole body
(6 mm, or 3 mm for robust crops and MR), crop the image to those structures plus 20 mm, segment
the crop and put it back; ``--roi-subset`` runs only the parts holding those structures and keeps
only them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from medseg.errors import MedsegError
from medseg.io.image import MedicalImage
from medseg.io.nifti import as_nifti_voxels, from_nifti_voxels
from medseg.totalsegmentator_folder import CROP_MARGIN_MM, TotalSegmentatorFolder, TotalsegModel, TotalsegPart


def _header_spacing(affine: np.ndarray) -> np.ndarray:
    """The voxel sizes a NIfTI header stores for ``affine`` (float32, what TotalSegmentator compares)."""
    return np.linalg.norm(affine[:3, :3], axis=0).astype(np.float32).astype(np.float64)


def _resampled(data: np.ndarray, affine: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, bool]:
    """data (x, y, z) at ``spacing`` mm: linear interpolation, edges repeated, integer values."""
    from scipy import ndimage

    old = _header_spacing(affine)
    target = np.asarray(spacing, dtype=np.float64)
    if np.array_equal(old, target):
        return data, affine, False
    zoom = old / target
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] / zoom[None, :]
    return ndimage.zoom(data.astype(np.float64), zoom, order=1, mode="nearest").astype(np.int32), new_affine, True


def _bounding_box(mask: np.ndarray, margin: np.ndarray) -> tuple[slice, ...]:
    """The mask's box grown by ``margin`` voxels per axis, inside the volume."""
    where = np.nonzero(mask)
    return tuple(
        slice(max(0, int(indices.min()) - int(m)), min(size, int(indices.max()) + 1 + int(m)))
        for indices, m, size in zip(where, margin, mask.shape)
    )


class TotalsegPredictor:
    """``options``: medseg.tasks.prediction.PredictorOptions; ``fast`` picks the task's 3 mm model,
    ``roi_subset`` the structures to segment (total and total_mr)."""

    def __init__(self, model_folder: TotalSegmentatorFolder, options):
        self.model_folder, self.options = model_folder, options
        self.mode = "fast" if options.fast else "default"
        model_folder.model(self.mode)  # refused now when the task has no such model
        self.roi_subset = self._checked_subset(options.roi_subset)
        self._predictors: dict[tuple[int, str], object] = {}
        self._rough: TotalSegmentatorFolder | None = None  # the rough task's folder, opened once for every case
        self.folds = [f"Dataset{part.dataset:03d}" for part in self._parts(model_folder, self.mode)]
        self.precision = options.precision

    def _checked_subset(self, names) -> list[str] | None:
        if not names:
            return None
        task = self.model_folder.task
        if task.fastest is None:
            raise MedsegError(f"--roi-subset is for TotalSegmentator's total and total_mr tasks, not {task.name}")
        unknown = [name for name in names if name not in self.model_folder.info.labels or name == "background"]
        if unknown:
            raise MedsegError(f"--roi-subset {', '.join(unknown)}: not a class of TotalSegmentator's {task.name} (`medseg describe {task.name}` lists them)")
        return list(names)

    def _parts(self, folder: TotalSegmentatorFolder, mode: str) -> list[TotalsegPart]:
        parts = folder.parts(mode)
        if self.roi_subset and folder is self.model_folder and len(parts) > 1:
            parts = [part for part in parts if set(part.names.values()) & set(self.roi_subset)]
        return parts

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)

    def predict_image(self, image: MedicalImage, probabilities: bool = False, case_id: str = "case"):
        from medseg.tasks.segmentation.inference.predictor import Prediction

        if probabilities:
            raise MedsegError(f"{case_id}: a TotalSegmentator task gives its merged label map only: predict without --save-probabilities")
        if image.ndim != 3 or image.num_channels != 1:
            raise MedsegError(f"{case_id}: TotalSegmentator segments one-channel 3D images, got {image.num_channels} channel(s) of {image.ndim}D")
        data, affine = as_nifti_voxels(image)
        labels = self._segment(np.asarray(data, dtype=np.float64), affine, case_id)
        segmentation = from_nifti_voxels(labels, affine)
        segmentation = MedicalImage(segmentation.array, image.spacing, image.origin, image.direction, metadata={"source": dict(image.metadata)})
        return Prediction(segmentation, None, dict(image.metadata))

    # ------------------------------------------------------------------------------ the steps
    def _segment(self, data: np.ndarray, affine: np.ndarray, case_id: str) -> np.ndarray:
        folder, task = self.model_folder, self.model_folder.task
        crop_to = list(task.crop) or self.roi_subset
        box = None
        if crop_to:
            rough_folder, rough_mode = self._rough_model()
            rough = self._run(rough_folder, rough_mode, data, affine, case_id)
            wanted = [value for name, value in rough_folder.info.labels.items() if name in crop_to]
            mask = np.isin(rough, wanted)
            if not mask.any():
                return np.zeros(data.shape, dtype=np.uint8)  # as TotalSegmentator: nothing of those structures, nothing segmented
            box = _bounding_box(mask, (CROP_MARGIN_MM / _header_spacing(affine)).astype(int))
            start = np.array([b.start for b in box], dtype=np.float64)
            data = data[box].astype(np.int32)
            affine = affine.copy()
            affine[:3, 3] = (affine @ np.append(start, 1.0))[:3]
        labels = self._run(folder, self.mode, data, affine, case_id)
        if box is not None:
            full = np.zeros(mask.shape, dtype=np.uint8)
            full[box] = labels
            labels = full
        if self.roi_subset:
            kept = [folder.info.labels[name] for name in self.roi_subset]
            labels = np.where(np.isin(labels, kept), labels, 0).astype(np.uint8)
        return labels

    def _rough_model(self) -> tuple[TotalSegmentatorFolder, str]:
        """The whole-body model a crop is found with: 3 mm for MR and robust crops, else 6 mm."""
        task = self.model_folder.task
        if self._rough is None:
            self._rough = self.model_folder if task.name == task.rough_task else TotalSegmentatorFolder.open(self.model_folder.weights, task.rough_task)
        rough = self._rough
        robust = task.robust_crop or task.modality == "MR"
        return rough, "fast" if robust else "fastest"

    def _run(self, folder: TotalSegmentatorFolder, mode: str, data: np.ndarray, affine: np.ndarray, case_id: str) -> np.ndarray:
        """One mode of a task on (x, y, z) voxels -> its merged labels on the same voxels."""
        import nibabel
        from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
        from scipy import ndimage

        model: TotalsegModel = folder.model(mode)
        canonical = nibabel.as_closest_canonical(nibabel.Nifti1Image(data, affine))
        voxels, grid = np.asarray(canonical.dataobj), canonical.affine
        if model.spacing is not None:
            voxels, grid, resampled = _resampled(voxels, grid, model.spacing)
        else:
            resampled = False
        image = from_nifti_voxels(voxels.astype(np.float32), grid.astype(np.float32).astype(np.float64))  # what nnU-Net reads back from the file TotalSegmentator writes
        merged = np.zeros(voxels.shape, dtype=np.uint8)
        task_values = folder.info.labels
        for part in self._parts(folder, mode):
            part_labels = self._part_predictor(folder, mode, part).predict_image(image, case_id=case_id).segmentation.array[0]
            lookup = np.zeros(max([*part.names, int(part_labels.max())]) + 1, dtype=np.uint8)
            for value, name in part.names.items():
                if name not in task_values:
                    raise MedsegError(f"{part.folder.path}: class {name!r} (label {value}) is not a class of TotalSegmentator's {folder.task.name}")
                lookup[value] = task_values[name]
            mapped = lookup[np.transpose(part_labels, (2, 1, 0))]
            np.copyto(merged, mapped, where=mapped != 0)
        if resampled:
            merged = ndimage.zoom(merged, np.array(canonical.shape) / np.array(merged.shape), order=0, mode="nearest")
        back = ornt_transform(axcodes2ornt("RAS"), io_orientation(affine))
        return np.ascontiguousarray(nibabel.orientations.apply_orientation(merged, back)).astype(np.uint8)

    def _part_predictor(self, folder: TotalSegmentatorFolder, mode: str, part: TotalsegPart):
        """medseg's nnU-Net predictor of one part, run as TotalSegmentator runs it: no mirroring, the
        task's window step, the mode's folds, the final checkpoint."""
        from medseg.tasks.segmentation.inference.predictor import load_predictor

        key = (part.dataset, mode)
        if key not in self._predictors:
            model = folder.model(mode)
            folds = [str(fold) for fold in model.folds] if model.folds is not None else None
            options = replace(self.options, folds=folds, overlap=1 - folder.task.step, mirror=False, checkpoint="final", fast=False, roi_subset=None)
            self._predictors[key] = load_predictor(part.folder, options)
        return self._predictors[key]


def load_totalseg_predictor(folder: TotalSegmentatorFolder, options) -> TotalsegPredictor:
    if options.runtime != "torch":
        raise MedsegError(f"{folder.path}: a TotalSegmentator task runs with the torch runtime, not {options.runtime}")
    return TotalsegPredictor(folder, options)
