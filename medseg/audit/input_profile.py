"""What a model's training images looked like, kept in its model folder (``input_profile.json``) so
every prediction can be checked against it (medseg.audit.input_checks).

Made from the dataset fingerprint when the model folder is made: per-axis ranges of spacing, size
and field of view, the right-left array axes seen, each channel's expected DICOM modality (from its
name) and normalisation, and per channel the range over the training images of each whole-image
intensity statistic (``image_intensity_statistics``). An nnU-Net v2 model folder carries its
``dataset_fingerprint.json``: its profile has spacings and the sizes after cropping (a lower bound on
the field of view), no whole-image intensities, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic

PROFILE_NAME = "input_profile.json"
PROFILE_VERSION = 1
MAX_INTENSITY_SAMPLES = 2_000_000  # whole-image statistics read an even stride of at most this many voxels
INTENSITY_STATISTICS = ("p00_5", "p05", "p50", "p95", "p99_5", "span", "median_position", "fraction_at_max")

# channel name words -> the DICOM Modality a series for that channel should carry
MODALITY_WORDS = {
    "CT": ("CT", "HU", "CTA", "NCCT", "CECT"),
    "MR": ("MR", "MRI", "T1", "T2", "T1W", "T2W", "T1C", "T1CE", "T1GD", "FLAIR", "ADC", "DWI", "PD", "SWI", "DIXON", "HBV", "DCE"),
    "PT": ("PET", "PT", "SUV"),
}


def expected_modality(channel_name: str) -> str | None:
    """The DICOM Modality a channel name implies (CT, MR, PT), None when the name does not say."""
    words = {word for word in "".join(c if c.isalnum() else " " for c in channel_name.upper()).split()}
    found = [modality for modality, names in MODALITY_WORDS.items() if words & set(names)]
    return found[0] if len(found) == 1 else None


def image_intensity_statistics(array: np.ndarray) -> list[dict[str, float]]:
    """array: (C, *spatial) -> per channel whole-image percentiles and the fraction of voxels at the
    image's maximum (saturation), the 0.5-99.5 percentile span and where the median sits in it (an
    inverted image moves it); an even stride of the voxels keeps large CTs fast and the result
    reproducible."""
    flat = array.reshape(array.shape[0], -1)
    step = max(1, flat.shape[1] // MAX_INTENSITY_SAMPLES)
    result = []
    for channel in flat:
        values = np.asarray(channel[::step], dtype=np.float64)
        p00_5, p05, p50, p95, p99_5 = np.percentile(values, (0.5, 5, 50, 95, 99.5))
        top, span = values.max(), float(p99_5 - p00_5)
        result.append({
            "p00_5": float(p00_5), "p05": float(p05), "p50": float(p50), "p95": float(p95), "p99_5": float(p99_5),
            "span": span, "median_position": float((p50 - p00_5) / span) if span > 0 else 0.5,  # where the median sits in the span
            "fraction_at_max": float(np.mean(values == top)),
        })
    return result


def _ranges(rows: list[list[float]]) -> dict[str, list[float]]:
    values = np.asarray(rows, dtype=float)
    return {"min": values.min(axis=0).tolist(), "max": values.max(axis=0).tolist(), "median": np.median(values, axis=0).tolist()}


def profile_from_fingerprint(fingerprint, normalization: list[str], source: str = "medseg fingerprint") -> dict:
    """fingerprint: medseg.planning.fingerprint.Fingerprint (or an object with its fields);
    normalization: each channel's scheme in the plans (ct, zscore, ...)."""
    spacings, shapes = fingerprint.spacings, fingerprint.shapes_before_crop
    extents = [[n * s for n, s in zip(shape, spacing)] for shape, spacing in zip(shapes, spacings)]
    intensities = getattr(fingerprint, "image_intensities", None)
    channels = []
    for index, name in enumerate(fingerprint.channel_names):
        channel = {"name": name, "modality": expected_modality(name), "normalization": normalization[index] if index < len(normalization) else None}
        if intensities:
            channel["intensity"] = {
                statistic: {"min": float(np.min(values)), "max": float(np.max(values)), "median": float(np.median(values))}
                for statistic in INTENSITY_STATISTICS
                for values in [[case[index][statistic] for case in intensities]]
            }
        channels.append(channel)
    return {
        "version": PROFILE_VERSION, "source": source, "ndim": int(fingerprint.ndim), "cases": len(spacings),
        "spacing_mm": _ranges(spacings), "shape": _ranges(shapes), "extent_mm": _ranges(extents),
        "shape_is_cropped": source != "medseg fingerprint",
        "left_right_axes": sorted({axis for axis in fingerprint.left_right_axes if axis is not None}),
        "channels": channels,
    }


def write_profile(folder: Path, profile: dict) -> Path:
    target = Path(folder) / PROFILE_NAME
    write_json_atomic(target, profile)
    return target


def read_profile(folder: Path) -> dict | None:
    """The folder's profile; None when it has none (trained before profiles were kept)."""
    from medseg.audit import read_audit_file

    return read_audit_file(folder, PROFILE_NAME, PROFILE_VERSION, "channels", "an input profile")


def profile_from_nnunet_fingerprint(path: Path, channel_names: list[str], normalization: list[str]) -> dict | None:
    """An nnU-Net folder's ``dataset_fingerprint.json`` as a profile (no whole-image intensities;
    sizes after nnU-Net's crop to the nonzero region); None when it is missing or unreadable."""
    from types import SimpleNamespace

    try:
        content = json.loads(Path(path).read_text())
        spacings = [[float(v) for v in s] for s in content["spacings"]]
        shapes = [[int(v) for v in s] for s in content["shapes_after_crop"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not spacings or len(spacings) != len(shapes):
        return None
    fingerprint = SimpleNamespace(
        spacings=spacings, shapes_before_crop=shapes, channel_names=list(channel_names), ndim=len(spacings[0]),
        left_right_axes=[], image_intensities=None,
    )
    return profile_from_fingerprint(fingerprint, normalization, source="nnU-Net dataset_fingerprint.json")

