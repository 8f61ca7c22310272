"""Crop-to-nonzero, the first step of every case's preprocessing, and the cropped cases the dataset
check keeps so that preprocessing does not read the raw images again.

The check reads every training case anyway (values, geometry, duplicates) and the fingerprint is
made from what it read; preprocessing needs the plans, which need the fingerprint of all cases, so
it cannot run in that pass. The check therefore writes each case cropped to its nonzero region
(``preprocessed/DatasetXXX_Name/cropped/``: ``ID.npy`` (C, *crop) float32, ``ID_seg.npy`` (1, *crop)
int16, ``ID.json`` geometry and the source files' size and modification time, written last).
Preprocessing takes a case from there when its source files are unchanged, and the folder is
removed once the run's preprocessing is done: it is a hand-off, not a second copy of the dataset."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.atomic import atomic_path, write_json_atomic
from medseg.data.layout import Case


def nonzero_mask(images: np.ndarray) -> np.ndarray:
    """images: (C, *spatial) -> (*spatial) bool: where any channel is nonzero, holes filled."""
    return ndimage.binary_fill_holes(np.any(images != 0, axis=0))


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """[[start, stop), ...] per axis of the True region (the whole array when empty)."""
    if not mask.any():
        return [[0, size] for size in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        box.append([int(present[0]), int(present[-1]) + 1])
    return box


def box_slices(box: list[list[int]]) -> tuple[slice, ...]:
    return tuple(slice(start, stop) for start, stop in box)


@dataclass
class CroppedCase:
    """A case cropped to its nonzero region, in the array axis order it was read in. The mask of
    the crop equals the uncropped mask cut to the box (a hole reaching the box's face reaches the
    zeros outside it), so a case read back from the check's folder recomputes it from ``data``."""

    data: np.ndarray  # (C, *crop)
    seg: np.ndarray | None  # (1, *crop)
    box: list[list[int]]  # [start, stop) per axis in the uncropped array
    shape: list[int]  # spatial shape before the crop
    spacing: list[float]
    origin: list[float]
    direction: list[list[float]]
    mask: np.ndarray | None = None  # (*crop) bool nonzero mask, when just computed


def crop_case(image, label: np.ndarray | None) -> CroppedCase:
    """image: MedicalImage (C, *spatial); label: (1, *spatial) array or None."""
    mask = nonzero_mask(image.array)
    box = bounding_box(mask)
    crop = (slice(None),) + box_slices(box)
    return CroppedCase(
        data=image.array[crop], seg=None if label is None else label[crop], box=box, shape=list(image.spatial_shape),
        spacing=[float(s) for s in image.spacing], origin=[float(o) for o in image.origin],
        direction=np.asarray(image.direction).tolist(), mask=mask[crop[1:]],
    )


def _sources(case: Case) -> list[list]:
    """Each source file's name, size and modification time: a changed file invalidates the crop."""
    files = [*case.images, *([case.label] if case.label is not None else [])]
    return [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in files]


def save_cropped_case(folder: Path, case: Case, cropped: CroppedCase) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{case.case_id}.npy") as temporary:
        np.save(temporary, np.ascontiguousarray(cropped.data, dtype=np.float32))
    with atomic_path(folder / f"{case.case_id}_seg.npy") as temporary:
        np.save(temporary, np.ascontiguousarray(cropped.seg))
    geometry = {key: getattr(cropped, key) for key in ("box", "shape", "spacing", "origin", "direction")}
    write_json_atomic(folder / f"{case.case_id}.json", {**geometry, "sources": _sources(case)})  # last: marks it complete


def load_cropped_case(folder: Path, case: Case) -> CroppedCase | None:
    """The case as the check kept it, or None when absent, incomplete or made from other files."""
    marker = folder / f"{case.case_id}.json"
    try:
        kept = json.loads(marker.read_text())
        if kept.pop("sources") != _sources(case):
            return None
        data = np.load(folder / f"{case.case_id}.npy")
        seg = np.load(folder / f"{case.case_id}_seg.npy")
    except (OSError, ValueError, KeyError):
        return None
    return CroppedCase(data=data, seg=seg, **kept)


def remove_cropped_cases(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
