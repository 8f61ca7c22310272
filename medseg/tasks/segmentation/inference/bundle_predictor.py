"""A MONAI bundle's predictor: the bundle's own ``network_def``, ``preprocessing``, ``inferer`` and
``postprocessing`` (``monai.bundle.ConfigParser`` on ``configs/inference.json``), with the weights
of ``models/model.pt``, applied to each image as ``python -m monai.bundle run`` would apply them to
a file, so the label map equals the bundle's own; medseg then writes every output it writes for its
own models (DICOM SEG / RTSTRUCT, manifest, REST, DICOM node).

An image medseg read (NIfTI, DICOM series, ...) is written to a temporary NIfTI that the bundle's
``LoadImaged`` reads; the bundle's savers (``SaveImage``/``SaveImaged``) are left out of its
postprocessing, and the label map it leaves, with the affine of its inverted transforms, comes back
through a NIfTI in the input's geometry, which is checked."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.io import MedicalImage, read_image, write_image

SAVERS = ("SaveImage", "SaveImaged")


def _parsed(parser, key: str, config: Path):
    try:
        return parser.get_parsed_content(key)
    except KeyError:
        raise MedsegError(f"{config}: no '{key}' (medseg runs a bundle's network_def, preprocessing, inferer and postprocessing)") from None
    except Exception as error:  # noqa: BLE001 - a bundle's expressions can fail any way: named
        raise MedsegError(f"{config}: '{key}' does not build ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None


def _without_savers(postprocessing):
    """The bundle's postprocessing as a list of transforms, its image savers left out."""
    transforms = list(getattr(postprocessing, "transforms", [postprocessing]))
    return [t for t in transforms if type(t).__name__ not in SAVERS]


class BundlePredictor:
    precision = "float32"

    def __init__(self, model_folder, device: torch.device):
        try:
            from monai.bundle import ConfigParser
        except ImportError:
            raise MedsegError(f"{model_folder.path} is a MONAI bundle: install MONAI to run it (pip install monai, or MEDSEG_EXTRAS=peers)") from None
        self.model_folder, self.folder, self.plans = model_folder, model_folder.path, model_folder.plans
        self.folds, self.device = list(model_folder.folds()), device
        config = model_folder.config_file
        self._work = tempfile.TemporaryDirectory(prefix="medseg-bundle-")
        parser = ConfigParser()
        try:
            parser.read_config(str(config))
        except Exception as error:  # noqa: BLE001
            raise MedsegError(f"{config}: unreadable bundle configuration ({error})") from None
        metadata = model_folder.path / "configs" / "metadata.json"
        parser.read_meta(str(metadata))
        parser["bundle_root"] = str(model_folder.path)
        parser["output_dir"] = self._work.name  # where its savers would write: never used, they are left out
        parser["device"] = f"$torch.device('{device}')"
        self.network = _parsed(parser, "network_def", config).to(device).eval()
        states = model_folder.load_module_states(self.folds[0])["network"]
        try:
            self.network.load_state_dict(states)
        except RuntimeError as error:
            raise MedsegError(f"{model_folder.checkpoint_path(self.folds[0])}: does not fit the bundle's network_def ({str(error).splitlines()[0]})") from None
        self.preprocessing = _parsed(parser, "preprocessing", config)
        self.inferer = _parsed(parser, "inferer", config)
        self.postprocessing = _without_savers(_parsed(parser, "postprocessing", config))

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)

    @torch.no_grad()
    def _label_map(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """The bundle on one NIfTI file -> its label map (i, j, k) and that map's affine."""
        data = self.preprocessing({"image": str(path)})
        image = data["image"]
        data["pred"] = self.inferer(image[None].to(self.device), self.network)[0].cpu()
        data["image"] = image.cpu()
        for transform in self.postprocessing:
            data = transform(data)
        prediction = data["pred"]
        affine = np.asarray(getattr(prediction, "affine", getattr(image, "affine", np.eye(4))), dtype=np.float64)
        array = np.asarray(prediction.detach().cpu().numpy() if hasattr(prediction, "detach") else prediction)
        if array.ndim == 4:
            array = array.argmax(0) if array.shape[0] > 1 else array[0]  # probabilities left by a postprocessing without AsDiscrete
        return np.rint(array).astype(np.int64), affine

    def predict_image(self, image: MedicalImage, probabilities: bool = False, case_id: str = "case"):
        import nibabel

        from medseg.tasks.segmentation.inference.predictor import Prediction, check_input

        check_input(image, self.plans, case_id)
        if probabilities:
            raise MedsegError(f"{case_id}: a MONAI bundle's postprocessing gives medseg its label map only: predict without --save-probabilities")
        with tempfile.TemporaryDirectory(dir=self._work.name) as work:
            source = write_image(MedicalImage(image.array, image.spacing, image.origin, image.direction), Path(work) / "image.nii.gz")
            try:
                labels, affine = self._label_map(source)
            except MedsegError:
                raise
            except Exception as error:  # noqa: BLE001 - the bundle's transforms or network failed on this image
                raise MedsegError(f"{case_id}: the bundle {self.folder.name} failed on it ({type(error).__name__}: {error})") from None
            declared = set(self.model_folder.info.labels.values())
            unknown = sorted(set(np.unique(labels).tolist()) - declared)
            if unknown:
                raise MedsegError(f"{case_id}: the bundle wrote label values {unknown} its metadata.json does not name ({self.model_folder.info.labels})")
            nibabel.Nifti1Image(labels.astype(np.uint16 if labels.max() > 255 else np.uint8), affine).to_filename(Path(work) / "labels.nii.gz")
            read = read_image(Path(work) / "labels.nii.gz")
        differences = read.geometry_differences(image) if read.spatial_shape == image.spatial_shape else [f"size {read.spatial_shape} vs {image.spatial_shape}"]
        if differences:
            raise MedsegError(f"{case_id}: the bundle's label map is not in the image's geometry ({'; '.join(differences)}): does its postprocessing invert the preprocessing (Invertd)?")
        segmentation = MedicalImage(read.array, image.spacing, image.origin, image.direction, metadata={"source": dict(image.metadata)})
        return Prediction(segmentation, None, dict(image.metadata))


def load_bundle_predictor(folder, options) -> BundlePredictor:
    if options.runtime != "torch":
        raise MedsegError(f"{folder.path}: a MONAI bundle runs with the torch runtime (its own transforms and inferer), not {options.runtime}")
    return BundlePredictor(folder, torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu")))
