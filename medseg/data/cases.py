"""Load one raw case as a multi-channel image plus its label, with geometry checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.layout import Case
from medseg.errors import DatasetError
from medseg.io import MedicalImage, read_image


def stack_channel_files(paths: list[Path]) -> MedicalImage:
    """Channel files of one case stacked: array (C, *spatial) float32, geometry of the first file.
    A palette PNG counts as the colours it shows (label maps keep their indices: load_case_label)."""
    return stack_channel_images(paths, [read_image(path) for path in paths])


def stack_channel_images(paths: list[Path], read: list[MedicalImage]) -> MedicalImage:
    """``stack_channel_files`` of channel images already read (``read[i]`` from ``paths[i]``)."""
    from medseg.io.natural import palette_as_colours

    images = [palette_as_colours(image) for image in read]
    first = images[0]
    for path, image in zip(paths[1:], images[1:]):
        differences = first.geometry_differences(image, names=(paths[0].name, path.name))
        if differences:
            raise DatasetError(f"{path}: geometry differs from {paths[0].name}: {'; '.join(differences)}")
    array = np.concatenate([image.array.astype(np.float32, copy=False) for image in images], axis=0)
    return first.with_array(array)


def load_case_images(case: Case) -> MedicalImage:
    return stack_channel_files(case.images)


def load_case_label(case: Case, reference: MedicalImage) -> MedicalImage:
    """The label map: array (1, *spatial) int16, checked against the image geometry."""
    if case.label is None:
        raise DatasetError(f"case {case.case_id}: has no label file")
    return as_label_map(case.label, read_image(case.label), reference)


def as_label_map(path: Path, label: MedicalImage, reference: MedicalImage) -> MedicalImage:
    """``load_case_label`` of a label file already read."""
    differences = reference.geometry_differences(label, names=("image", "label"))
    if differences:
        raise DatasetError(f"{path}: geometry differs from its image: {'; '.join(differences)}")
    if label.num_channels != 1:
        raise DatasetError(f"{path}: a label map must have one channel, found {label.num_channels}")
    values = label.array
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise DatasetError(f"{path}: label values must be whole numbers")
    return label.with_array(values.astype(np.int16))
