"""A polyp-size proxy on Kvasir-SEG, so the polyp-size classifiers run on real frames here.

Kvasir-SEG publishes no polyp sizes in millimetres (the PolypSize recipe needs REAL-Colon or SUN).
This recipe labels each frame by the fraction of the image its polyp mask covers, binned at the
dataset's tertiles into three classes ``small_area`` / ``medium_area`` / ``large_area``: an apparent
size, not a physical one (it also depends on the distance to the camera and the zoom). Frames with
several polyps count their total area. The labels table keeps ``area_fraction`` and the tertile
``cut_points`` are in dataset.json. Kvasir-SEG has no patient ids, so folds cannot be grouped by
patient: results on it are optimistic where frames of one patient fall in two folds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import MedsegError
from medseg.io import read_image
from medseg_datasets.kvasir_seg import MASK_THRESHOLD
from medseg_datasets.registry import Recipe, register_recipe, require_folder

AREA_CLASSES = ["small_area", "medium_area", "large_area"]


def area_class(fraction: float, cut_points: list[float]) -> str:
    """The tertile bin of ``fraction``: below the first cut, below the second, or above."""
    return AREA_CLASSES[int(np.searchsorted(cut_points, fraction, side="right"))]


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    src = Path(src)
    images_folder = require_folder(src / "images", "Kvasir-SEG images/ folder")
    masks_folder = require_folder(src / "masks", "Kvasir-SEG masks/ folder")
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:
        fractions: dict[str, float] = {}
        for image_path in sorted(p for p in images_folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            case_id = image_path.stem
            try:
                mask_path = next((c for c in (masks_folder / f"{case_id}{s}" for s in (".jpg", ".jpeg", ".png")) if c.is_file()), None)
                if mask_path is None:
                    raise MedsegError(f"{image_path}: no mask {case_id}.jpg in {masks_folder}")
                image, mask = read_image(image_path), read_image(mask_path)
                if image.num_channels != 3:
                    raise MedsegError(f"{image_path}: expected an RGB image, got {image.num_channels} channel(s)")
                if mask.spatial_shape != image.spatial_shape:
                    raise MedsegError(f"{mask_path}: size {mask.spatial_shape} differs from image {image.spatial_shape}")
                fraction = float((mask.array.max(axis=0) > MASK_THRESHOLD).mean())
                if fraction == 0.0:
                    raise MedsegError(f"{mask_path}: empty mask (no polyp to size)")
            except MedsegError as error:
                builder.skip(str(image_path), str(error))
                continue
            builder.add_image(case_id, image)
            fractions[case_id] = fraction
            builder.summary.num_training += 1
        if len(fractions) < 3:
            raise MedsegError(f"{src}: {len(fractions)} usable frame(s); the tertiles need at least 3")
        cut_points = [float(q) for q in np.quantile(list(fractions.values()), [1 / 3, 2 / 3])]
        with builder.path("labelsTr.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "label", "area_fraction"])
            for case_id, fraction in fractions.items():
                writer.writerow([case_id, area_class(fraction, cut_points), f"{fraction:.6f}"])
        return builder.finish(
            {
                "name": "KvasirPolypSize",
                "task": "classification",
                "description": "Kvasir-SEG frames labelled by polyp area fraction tertiles (a size proxy, not millimetres)",
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "classes": AREA_CLASSES,
                "multi_label": False,
                "cut_points": cut_points,
                "numTraining": builder.summary.num_training,
                "file_ending": ".png",
                "licence": "Kvasir-SEG: research and education use",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="KvasirPolypSize",
        dataset_id=6,
        task_type="classification",
        summary="polyp-size proxy on Kvasir-SEG: 3 classes by polyp area fraction tertile (no mm sizes published)",
        source="folder with images/*.jpg and masks/*.jpg (Kvasir-SEG)",
        convert=convert,
    )
)
