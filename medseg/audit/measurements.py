"""Per-structure measurements of a prediction, in the input's geometry: what a radiologist reads off
a segmentation before trusting it (TotalSegmentator's ``--statistics``, done for every model).

For each label of the model: voxel count, volume in mL (3D) or area in mm² (2D), connected
components (full connectivity: voxels touching at a corner are one component), the bounding box in
patient coordinates (LPS mm, the corners of the outermost voxels' centres) and the image's
intensity inside the structure per channel (mean, sd, percentiles; Hounsfield units for CT read
from DICOM or from a NIfTI holding HU). A label absent from the case is listed with zeros, so every
case has the same rows (a batch CSV then has one row per case and label)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.errors import MedsegError
from medseg.io import MedicalImage

MEASUREMENTS_SUFFIX = ".measurements.json"
BATCH_CSV = "measurements.csv"
PERCENTILES = (5, 25, 50, 75, 95)
CSV_COLUMNS = (
    "case", "label", "value", "voxels", "volume_ml", "area_mm2", "components", "bbox_min_mm", "bbox_max_mm",
    "channel", "intensity_unit", "mean", "sd", "min", "max", *(f"p{p}" for p in PERCENTILES),
)


def intensity_unit(image: MedicalImage) -> str:
    """HU for a CT series (its rescale is applied when read), else the image's own units."""
    modality = str(image.metadata.get("modality", "")).upper()
    return "HU" if modality == "CT" else "image units"


def _bounding_box_mm(mask: np.ndarray, image: MedicalImage) -> tuple[list[float], list[float]]:
    """World (LPS mm) box around the voxel centres of ``mask``: the min and max of its corners."""
    indices = np.nonzero(mask)
    low = np.array([int(i.min()) for i in indices], dtype=float)
    high = np.array([int(i.max()) for i in indices], dtype=float)
    ndim = mask.ndim
    corners = np.array(np.meshgrid(*[[low[a], high[a]] for a in range(ndim)], indexing="ij")).reshape(ndim, -1)
    world = image.affine[:ndim, :ndim] @ corners + image.affine[:ndim, ndim:ndim + 1]
    return [round(float(v), 3) for v in world.min(axis=1)], [round(float(v), 3) for v in world.max(axis=1)]


def _intensities(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64, copy=False)
    percentiles = np.percentile(values, PERCENTILES)
    return {
        "mean": round(float(values.mean()), 4), "sd": round(float(values.std()), 4),
        "min": round(float(values.min()), 4), "max": round(float(values.max()), 4),
        **{f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, percentiles)},
    }


def measure_structures(label_map: np.ndarray, image: MedicalImage, labels: dict[str, int]) -> dict:
    """label_map: (*spatial) ints in ``image``'s geometry; labels: name -> value (0: background,
    not measured). Returns the case's measurements (the JSON written beside the segmentation)."""
    if tuple(label_map.shape) != image.spatial_shape:
        raise ValueError(f"label map {label_map.shape} does not match the image {image.spatial_shape}")
    voxel_mm3 = float(np.prod(image.spacing))
    structure = ndimage.generate_binary_structure(label_map.ndim, label_map.ndim)
    unit = intensity_unit(image)
    structures = []
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        if value == 0:
            continue
        mask = label_map == value
        voxels = int(mask.sum())
        row: dict = {"label": name, "value": int(value), "voxels": voxels}
        size = voxels * voxel_mm3
        if image.ndim == 3:
            row["volume_ml"] = round(size / 1000.0, 4)
        else:
            row["area_mm2"] = round(size, 4)
        row["components"] = int(ndimage.label(mask, structure)[1]) if voxels else 0
        if voxels:
            row["bbox_min_mm"], row["bbox_max_mm"] = _bounding_box_mm(mask, image)
            row["intensity"] = {str(c): _intensities(image.array[c][mask]) for c in range(image.num_channels)}
        else:
            row["bbox_min_mm"] = row["bbox_max_mm"] = None
            row["intensity"] = {}
        structures.append(row)
    return {
        "spacing_mm": list(image.spacing), "shape": list(image.spatial_shape), "intensity_unit": unit,
        "coordinates": "LPS mm" if image.ndim == 3 else "image mm", "structures": structures,
    }


def measurements_json(measurements: dict) -> str:
    return json.dumps(measurements, indent=1)


def csv_rows(case: str, measurements: dict) -> list[dict]:
    """One row per case, label and channel (a label absent from the case: one row without intensities)."""
    rows = []
    for structure in measurements["structures"]:
        base = {
            "case": case, "label": structure["label"], "value": structure["value"], "voxels": structure["voxels"],
            "volume_ml": structure.get("volume_ml", ""), "area_mm2": structure.get("area_mm2", ""), "components": structure["components"],
            "bbox_min_mm": " ".join(str(v) for v in structure["bbox_min_mm"] or []),
            "bbox_max_mm": " ".join(str(v) for v in structure["bbox_max_mm"] or []),
            "intensity_unit": measurements["intensity_unit"],
        }
        if not structure["intensity"]:
            rows.append(base)
        for channel, values in structure["intensity"].items():
            rows.append({**base, "channel": channel, **values})
    return rows


def batch_csv(entries: list[tuple[str, Path]]) -> str:
    """The batch's CSV from (case, its measurements JSON) pairs; a JSON that cannot be read is an
    error naming it (a table silently missing a case reads as complete)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case, path in entries:
        try:
            rows = csv_rows(case, json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MedsegError(f"{path}: unreadable measurements of case {case} ({type(error).__name__}: {error}); rerun the case") from None
        for row in rows:
            writer.writerow(row)
    return buffer.getvalue()
