"""The dataset fingerprint every task's planner reads: per-case spacing and shape after
crop-to-nonzero, and per-channel intensity statistics. How a task makes it lives with the task
(segmentation: medseg.tasks.segmentation.planning.fingerprint)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

FINGERPRINT_VERSION = 2


@dataclass
class Fingerprint:
    dataset_name: str
    ndim: int
    channel_names: list[str]
    case_ids: list[str]
    spacings: list[list[float]]  # per case, array-axis order
    shapes_before_crop: list[list[int]]
    shapes_after_crop: list[list[int]]
    left_right_axes: list[int | None]  # per case: the array axis running right-left (None if oblique)
    object_extents_mm: list[list[list[float]]]  # per case: bounding-box size (mm, per axis) of foreground components
    median_relative_size_after_cropping: float
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    version: int = FINGERPRINT_VERSION
    # per case, per channel: whole-image intensity statistics (medseg.audit.input_profile), which
    # the model folder's input profile keeps for checking new inputs; None in older fingerprints
    image_intensities: list[list[dict[str, float]]] | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Fingerprint":
        try:
            content = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise MedsegError(f"{path}: cannot read the fingerprint ({error}); rerun `medseg fingerprint`") from None
        if content.get("version") != FINGERPRINT_VERSION:
            raise MedsegError(f"{path}: fingerprint version {content.get('version')} is not {FINGERPRINT_VERSION}; rerun `medseg fingerprint`")
        return cls(**content)


def intensity_statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {key: float("nan") for key in ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")}
    low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
    return {
        "mean": float(values.mean()),
        "median": float(median),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "percentile_99_5": float(high),
        "percentile_00_5": float(low),
    }
