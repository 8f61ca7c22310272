"""The segmentation fingerprint: per-case spacing, shape after crop-to-nonzero, orientation and
object sizes, and per-channel foreground intensity statistics from a fixed-size random sample (the
planner's only input besides dataset.json). The dataset check reads every case anyway and can
hand each case's analysis over (medseg.data.check), so the images need not be read again here."""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from medseg.audit.input_profile import image_intensity_statistics
from medseg.data.layout import SEGMENTATION_LAYOUT, Case, DatasetDescription, list_cases
from medseg.errors import DatasetError, MedsegError
from medseg.io.image import left_right_axis
from medseg.parallel import map_parallel
from medseg.planning.fingerprint import Fingerprint, intensity_statistics
from medseg.tasks.segmentation.preprocessing.cropping import CroppedCase, crop_case

TOTAL_FOREGROUND_SAMPLES = 1_000_000  # spread over the cases; enough for stable percentiles
OBJECTS_PER_CASE = 32  # connected components kept per case for the object-size statistics


def object_extents_mm(label: np.ndarray, spacing) -> list[list[float]]:
    """Bounding-box size in mm of each connected component of each foreground label (an even
    sample of at most OBJECTS_PER_CASE): how coarse a resolution the objects survive."""
    extents = []
    for value in np.unique(label):
        if value == 0:
            continue
        components, _ = ndimage.label(label == value)
        for box in ndimage.find_objects(components):
            extents.append([float((axis.stop - axis.start) * s) for axis, s in zip(box, spacing)])
    if len(extents) > OBJECTS_PER_CASE:
        extents = [extents[i] for i in np.linspace(0, len(extents) - 1, OBJECTS_PER_CASE).round().astype(int)]
    return extents


def analyze_case(job: tuple[Case, int]) -> dict:
    """Spacing, shapes and a foreground intensity sample of one training case (runs in a worker)."""
    from medseg.data.cases import load_case_images, load_case_label

    case, num_samples = job
    try:
        image = load_case_images(case)
        label = load_case_label(case, image)
    except MedsegError as error:
        return {"case_id": case.case_id, "error": str(error)}
    except Exception as error:  # an unreadable file must not kill the whole fingerprint
        return {"case_id": case.case_id, "error": f"{case.images[0]}: unreadable ({type(error).__name__}: {error})"}
    return analyze_loaded_case(case, image, label, num_samples)


def samples_per_case(num_cases: int) -> int:
    return max(100, TOTAL_FOREGROUND_SAMPLES // max(num_cases, 1))


def analyze_loaded_case(case: Case, image, label, num_samples: int, cropped: CroppedCase | None = None) -> dict:
    """``analyze_case`` of a case already read: image (C, *spatial), label (1, *spatial) MedicalImages
    (the dataset check reads every case anyway, so the fingerprint can keep what it found);
    ``cropped``: the case's ``crop_case``, when already made."""
    cropped = cropped or crop_case(image, label.array)
    foreground = cropped.seg[0] > 0
    rng = np.random.default_rng(1234)
    samples = []
    for channel in cropped.data:
        values = channel[foreground]
        samples.append(rng.choice(values, num_samples, replace=True) if values.size else np.zeros(0, np.float32))
    return {
        "case_id": case.case_id,
        "spacing": [float(s) for s in image.spacing],
        "shape_before_crop": list(image.spatial_shape),
        "shape_after_crop": list(cropped.data.shape[1:]),
        "left_right_axis": left_right_axis(image.direction),
        "object_extents_mm": object_extents_mm(label.array[0], image.spacing),
        "samples": samples,
        "image_intensities": image_intensity_statistics(image.array),
    }


def extract_fingerprint(
    description: DatasetDescription, workers: int | None = None, progress: Callable[[int, int], None] | None = None,
    analyses: dict[str, dict] | None = None,
) -> Fingerprint:
    """``analyses``: case id -> ``analyze_loaded_case`` results the dataset check made while it read
    the cases; used when they cover every training case, so the images are not read again."""
    cases, problems = list_cases(description, "Tr")
    if problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    if description.task_type != SEGMENTATION_LAYOUT:
        raise DatasetError(f"{description.folder}: fingerprinting is for segmentation datasets (this one is {description.task_type})")
    if not cases:
        raise DatasetError(f"{description.folder}: imagesTr holds no cases")
    if analyses and all(case.case_id in analyses for case in cases):
        results = [analyses[case.case_id] for case in cases]
    else:
        results = map_parallel(analyze_case, [(case, samples_per_case(len(cases))) for case in cases], workers, progress)
    failures = [r["error"] for r in results if "error" in r]
    if failures:
        raise DatasetError(f"{len(failures)} case(s) could not be read: " + "; ".join(failures[:5]))
    ndims = {len(r["spacing"]) for r in results}
    if len(ndims) != 1:
        raise DatasetError(f"{description.folder}: cases mix 2D and 3D images")
    properties = {}
    for channel in range(description.num_channels):
        values = np.concatenate([r["samples"][channel] for r in results])
        properties[str(channel)] = intensity_statistics(values)
    relative = [np.prod(r["shape_after_crop"]) / np.prod(r["shape_before_crop"]) for r in results]
    return Fingerprint(
        dataset_name=description.folder.name,
        ndim=ndims.pop(),
        channel_names=[description.channel_names[k] for k in sorted(description.channel_names)],
        case_ids=[r["case_id"] for r in results],
        spacings=[r["spacing"] for r in results],
        shapes_before_crop=[r["shape_before_crop"] for r in results],
        shapes_after_crop=[r["shape_after_crop"] for r in results],
        left_right_axes=[r["left_right_axis"] for r in results],
        object_extents_mm=[r["object_extents_mm"] for r in results],
        median_relative_size_after_cropping=float(np.median(relative)),
        foreground_intensity_properties_per_channel=properties,
        image_intensities=[r["image_intensities"] for r in results] if all("image_intensities" in r for r in results) else None,
    )
