"""DICOM objects derived from a label map: DICOM SEG (highdicom) and RTSTRUCT (rt-utils).

Both reference the source series they were predicted from (medseg.io.dicom.sources), carry one
segment / ROI per foreground label present (absent labels are left out: an empty segment is noise
in a viewer's list), coded names (medseg.io.dicom.codes) and medseg's colours, and identify the
algorithm (name and version). Written atomically: an interrupted run never leaves a file that looks
complete. ``label_map``: (Z, Y, X) (or (Y, X) for a projection image) in the source's slice order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import MedsegError
from medseg.io.colours import label_colour
from medseg.io.dicom.codes import SegmentCode
from medseg.io.dicom.sources import DicomSources

SERIES_NUMBER_SEG = 9901  # high numbers keep derived series after the acquired ones in a viewer's list
SERIES_NUMBER_RTSTRUCT = 9902


class UnsupportedSource(MedsegError):
    """This object type cannot be made for this source (the output is skipped with the reason)."""


@dataclass(frozen=True)
class Algorithm:
    name: str  # e.g. "medseg unet Dataset004_Hippocampus 3d_fullres"
    version: str  # medseg's version
    manufacturer: str = "medseg"


def present_labels(label_map: np.ndarray, labels: dict[str, int]) -> dict[str, int]:
    """The foreground labels that occur in the map, by value."""
    found = set(np.unique(label_map).tolist())
    unknown = found - set(labels.values())
    if unknown:
        raise MedsegError(f"label map holds values {sorted(unknown)} the model does not declare ({labels})")
    return {name: value for name, value in sorted(labels.items(), key=lambda item: item[1]) if value != 0 and value in found}


def _planes(label_map: np.ndarray) -> np.ndarray:
    return label_map[None] if label_map.ndim == 2 else label_map


def _check_shape(planes: np.ndarray, sources: DicomSources) -> None:
    first = sources.datasets[0]
    rows, columns = int(first.Rows), int(first.Columns)
    slices = len(sources.frames) if sources.multiframe else len(sources.datasets)
    if planes.shape != (slices, rows, columns):
        raise MedsegError(f"label map {planes.shape} does not match the source series ({slices} slices of {rows} x {columns})")


def _code(triple):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=triple[1], scheme_designator=triple[0], meaning=triple[2])


def write_dicom_seg(
    label_map: np.ndarray, labels: dict[str, int], codes: dict[str, SegmentCode], sources: DicomSources, algorithm: Algorithm, target: Path,
) -> Path | None:
    """A binary DICOM SEG with one segment per label present; None (nothing written) when no label is."""
    import highdicom as hd
    from pydicom.sr.codedict import codes as dicom_codes

    planes = _planes(np.asarray(label_map))
    _check_shape(planes, sources)
    present = present_labels(planes, labels)
    if not present:
        return None
    if sources.multiframe:  # frames in the multi-frame object's order, not the volume's
        number_of_frames = int(sources.datasets[0].get("NumberOfFrames", 1))
        if sorted(sources.frames) != list(range(number_of_frames)):
            raise MedsegError(f"the volume uses {len(sources.frames)} of the source object's {number_of_frames} frames; DICOM SEG needs all of them")
        reordered = np.empty_like(planes)
        reordered[np.asarray(sources.frames)] = planes
        planes = reordered
    # segment numbers 1..N in label order; the pixel array holds segment numbers
    segment_map = np.zeros(planes.shape, dtype=np.uint16)
    algorithm_identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=dicom_codes.cid7162.ArtificialIntelligence, version=algorithm.version,
    )
    descriptions = []
    for number, (name, value) in enumerate(present.items(), start=1):
        segment_map[planes == value] = number
        code = codes[name]
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number, segment_label=name[:64], segmented_property_category=_code(code.category),
                segmented_property_type=_code(code.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_identification, tracking_uid=hd.UID(), tracking_id=f"{name} (label {value})"[:64],
                display_color=hd.color.CIELabColor.from_rgb(*label_colour(value)),
            )
        )
    source_images, invented_measures = _as_highdicom_reads(sources.datasets)
    try:
        segmentation = hd.seg.Segmentation(
            source_images=source_images, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER_SEG,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer=algorithm.manufacturer,
            manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.version, device_serial_number="0",
            content_description="medseg automatic segmentation", content_creator_name="medseg^", series_description=f"SEG {algorithm.name}"[:64],
            content_label="MEDSEG",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise MedsegError(f"cannot build a DICOM SEG for {target.name}: {error}") from None
    if invented_measures:  # the SEG of an image without a frame of reference needs no pixel measures: none is claimed
        for shared in segmentation.get("SharedFunctionalGroupsSequence", []):
            if "PixelMeasuresSequence" in shared:
                del shared.PixelMeasuresSequence
    if "FrameOfReferenceUID" not in segmentation and "PatientOrientation" not in segmentation:
        # General Image: Patient Orientation (type 2C) is required without a patient frame; the source's, or empty (unknown)
        segmentation.PatientOrientation = sources.datasets[0].get("PatientOrientation", "")
    with atomic_path(target) as temporary:
        segmentation.save_as(temporary)
    return target


def _as_highdicom_reads(datasets: list) -> tuple[list, bool]:
    """highdicom reads a source whose IOD allows several frames (VL Endoscopic, Video, ...) as an
    enhanced multi-frame object, with functional groups; a projection image with one frame and none
    of them (as endoscopy systems store a frame) gets them on a copy: one frame, its pixel spacing,
    or a placeholder that is removed from the SEG again. -> the sources, and whether it was invented."""
    import copy

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if len(datasets) != 1 or any(k in datasets[0] for k in ("ImagePositionPatient", "SharedFunctionalGroupsSequence", "NumberOfFrames")):
        return datasets, False
    source = copy.deepcopy(datasets[0])
    measures = Dataset()
    measures.PixelSpacing = list(source.get("PixelSpacing", [1, 1]))
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    source.NumberOfFrames = 1
    source.SharedFunctionalGroupsSequence = Sequence([shared])
    return [source], "PixelSpacing" not in datasets[0]


def write_rtstruct(
    label_map: np.ndarray, labels: dict[str, int], codes: dict[str, SegmentCode], sources: DicomSources, algorithm: Algorithm, target: Path,
) -> Path | None:
    """An RTSTRUCT with one closed-planar ROI per label present; None when no label is. Needs a
    volume of single-frame slices (RT structure sets reference image instances per contour)."""
    from rt_utils import RTStruct
    from rt_utils import ds_helper

    planes = _planes(np.asarray(label_map))
    if sources.multiframe or planes.shape[0] < 1 or "ImagePositionPatient" not in sources.datasets[0]:
        raise UnsupportedSource("RTSTRUCT needs a volume of single-frame slices with patient positions (CT/MR/PET series); dicom-seg covers this input")
    _check_shape(planes, sources)
    row_spacing, column_spacing = (float(v) for v in sources.datasets[0].PixelSpacing)
    if abs(row_spacing - column_spacing) > 1e-6 * max(row_spacing, column_spacing):
        # rt-utils scales both in-plane axes by PixelSpacing[0]: contours on non-square pixels would be misplaced
        raise UnsupportedSource(f"RTSTRUCT of non-square pixels ({row_spacing} x {column_spacing} mm) is not supported; dicom-seg covers this input")
    present = present_labels(planes, labels)
    if not present:
        return None
    try:
        dataset = ds_helper.create_rtstruct_dataset(sources.datasets)
        structure = RTStruct(sources.datasets, dataset)
        structure.set_series_description(f"RTSTRUCT {algorithm.name}"[:64])
        for name, value in present.items():
            # rt-utils takes (rows, columns, slices) in the order of the datasets it was given
            structure.add_roi(
                mask=np.ascontiguousarray(np.moveaxis(planes == value, 0, -1)), color=list(label_colour(value)), name=name[:64],
                description=f"{codes[name].type[2]} (label {value})"[:64], approximate_contours=True, roi_generation_algorithm="AUTOMATIC",
            )
        for roi in dataset.ROIContourSequence:  # DS values hold at most 16 characters: 0.1 micrometre is plenty
            for contour in roi.ContourSequence:
                contour.ContourData = [round(float(v), 4) for v in contour.ContourData]
                contour.NumberOfContourPoints = len(contour.ContourData) // 3
        dataset.SeriesNumber = SERIES_NUMBER_RTSTRUCT
        reference = sources.datasets[0]
        for keyword in ("ReferringPhysicianName", "AccessionNumber", "StudyID", "PositionReferenceIndicator"):  # type 2: copied, maybe empty
            setattr(dataset, keyword, reference.get(keyword, "") or "")
        dataset.OperatorsName = ""
        dataset.FrameOfReferenceUID = structure.frame_of_reference_uid
        dataset.Manufacturer = algorithm.manufacturer
        dataset.ManufacturerModelName = algorithm.name[:64]
        dataset.SoftwareVersions = algorithm.version
        dataset.StructureSetLabel = "MEDSEG"
    except Exception as error:  # rt-utils raises bare Exceptions
        raise MedsegError(f"cannot build an RTSTRUCT for {target.name}: {error}") from None
    with atomic_path(target) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return target
