"""One case through a configuration's preprocessing, and the properties that invert it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from medseg.errors import MedsegError
from medseg.io import MedicalImage
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.tasks.segmentation.preprocessing.cropping import CroppedCase, crop_case, nonzero_mask
from medseg.tasks.segmentation.preprocessing.normalization import normalize_channel
from medseg.tasks.segmentation.preprocessing.resampling import coarse_axis, new_shape, resample_image, resample_labels

MAX_LOCATIONS_PER_CLASS = 10_000  # voxels remembered per class for foreground oversampling


@dataclass
class CaseProperties:
    """Everything needed to map a prediction back onto the original image (transposed axis order
    unless said otherwise)."""

    case_id: str
    original_shape: list[int]  # array order, as read
    original_spacing: list[float]  # array order, as read
    origin: list[float]
    direction: list[list[float]]
    shape_before_crop: list[int]  # transposed
    bbox: list[list[int]]  # crop box in the transposed, uncropped array
    shape_after_crop: list[int]
    spacing_after_crop: list[float]  # transposed original spacing
    target_spacing: list[float]
    shape_after_resampling: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


def target_spacing_for(configuration: ConfigurationPlan, spacing_t: list[float]) -> list[float]:
    """3D data in a 2D configuration keep their slice spacing; only the in-plane axes are resampled."""
    if len(spacing_t) == configuration.ndim:
        return list(configuration.spacing)
    return [spacing_t[0], *configuration.spacing]


def _check_resampled_size(case_id: str, channels: int, shape, spacing, target) -> None:
    """Resampling to the plan's spacing must stay under the image size limit (a target spacing far
    finer than the image's would otherwise allocate without bound)."""
    from medseg.errors import MedsegError
    from medseg.io.limits import LIMIT_VARIABLE, max_image_bytes

    size = float(np.prod(shape, dtype=np.float64)) * channels * 4
    if size > max_image_bytes():
        raise MedsegError(
            f"{case_id}: resampling from spacing {[round(s, 4) for s in spacing]} to the plan's {[round(t, 4) for t in target]} "
            f"gives {list(shape)} voxels ({size / 1024**3:.1f} GB), above the {max_image_bytes() / 1024**3:.0f} GB limit (${LIMIT_VARIABLE})"
        )


def _transpose(array: np.ndarray, order: list[int]) -> np.ndarray:
    return array.transpose([0, *[axis + 1 for axis in order]])


def preprocess_case(
    image: MedicalImage, label: np.ndarray | None, plans: Plans, configuration: ConfigurationPlan, case_id: str
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """image (C, *spatial), label (L, *spatial) or None -> data (C, *S') float32, label (L, *S') int8, properties
    (L: 1, or 2 for a cascade stage's label and previous-stage segmentation)."""
    return preprocess_cropped(crop_case(image, label), plans, configuration, case_id)


def preprocess_cropped(
    cropped: CroppedCase, plans: Plans, configuration: ConfigurationPlan, case_id: str
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """``preprocess_case`` of a case already cropped to its nonzero region (medseg.tasks.segmentation.preprocessing.cropping)."""
    ndim = len(cropped.shape)
    order = plans.transpose_forward if ndim == 3 else list(range(ndim))
    data = _transpose(cropped.data.astype(np.float32, copy=False), order)
    seg = _transpose(cropped.seg, order) if cropped.seg is not None else None
    spacing_t = [float(cropped.spacing[axis]) for axis in order]
    mask = nonzero_mask(data) if cropped.mask is None else cropped.mask.transpose(order)
    channels = []
    for index, (channel, norm) in enumerate(zip(data, configuration.normalization)):
        try:
            channels.append(normalize_channel(channel, norm["scheme"], norm["properties"], mask if norm["use_mask"] else None))
        except MedsegError as error:
            raise MedsegError(f"{case_id}: channel {index}: {error}") from None
    data = np.stack(channels)
    target = target_spacing_for(configuration, spacing_t)
    shape = new_shape(data.shape[1:], spacing_t, target)
    _check_resampled_size(case_id, data.shape[0], shape, spacing_t, target)
    resampling = configuration.resampling
    axis = coarse_axis(spacing_t, target, resampling["anisotropy_threshold"])
    data = resample_image(data, shape, axis, resampling["image_order"], resampling["out_of_plane_order"])
    if seg is not None:  # channel 0 the label; a cascade's channel 1 the previous stage's segmentation
        seg = np.stack([resample_labels(s, shape, axis, resampling["label_order"], resampling["out_of_plane_order"]) for s in seg]).astype(np.int8)
    properties = CaseProperties(
        case_id=case_id,
        original_shape=[int(n) for n in cropped.shape],
        original_spacing=[float(s) for s in cropped.spacing],
        origin=[float(o) for o in cropped.origin],
        direction=[list(row) for row in cropped.direction],
        shape_before_crop=[int(cropped.shape[axis]) for axis in order],
        bbox=[list(cropped.box[axis]) for axis in order],
        shape_after_crop=[int(n) for n in mask.shape],
        spacing_after_crop=spacing_t,
        target_spacing=[float(t) for t in target],
        shape_after_resampling=[int(n) for n in shape],
    )
    return data, seg, properties


def class_locations(seg: np.ndarray, seed: int = 0, ignore_label: int | None = None) -> dict[str, np.ndarray]:
    """seg: (1, *S) -> per foreground value (not the ignore label: patches are drawn towards
    annotated structures), up to MAX_LOCATIONS_PER_CLASS voxel coordinates (N, ndim)."""
    rng = np.random.default_rng(seed)
    locations = {}
    for value in np.unique(seg[0]):
        if value <= 0 or value == ignore_label:
            continue
        coordinates = np.argwhere(seg[0] == value)
        if len(coordinates) > MAX_LOCATIONS_PER_CLASS:
            coordinates = coordinates[rng.choice(len(coordinates), MAX_LOCATIONS_PER_CLASS, replace=False)]
        locations[str(int(value))] = coordinates.astype(np.int32)
    return locations
