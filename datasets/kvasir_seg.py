"""Kvasir-SEG colonoscopy polyps (``images/*.jpg``, ``masks/*.jpg``) -> RGB PNG images and binary
polyp labels. Masks are JPEG, so their edges carry compression noise: foreground is value > 127."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import MedsegError
from medseg.io import read_image
from medseg_datasets.registry import Recipe, register_recipe, require_folder

MASK_THRESHOLD = 127


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    src = Path(src)
    images_folder = require_folder(src / "images", "Kvasir-SEG images/ folder")
    masks_folder = require_folder(src / "masks", "Kvasir-SEG masks/ folder")
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:
        for image_path in sorted(p for p in images_folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
            case_id = image_path.stem
            try:
                candidates = [masks_folder / f"{case_id}{s}" for s in (".jpg", ".jpeg", ".png")]
                mask_path = next((c for c in candidates if c.is_file()), None)
                if mask_path is None:
                    raise MedsegError(f"{image_path}: no mask {case_id}.jpg in {masks_folder}")
                image = read_image(image_path)
                if image.num_channels != 3:
                    raise MedsegError(f"{image_path}: expected an RGB image, got {image.num_channels} channel(s)")
                mask = read_image(mask_path)
                if mask.spatial_shape != image.spatial_shape:
                    raise MedsegError(f"{mask_path}: size {mask.spatial_shape} differs from image {image.spatial_shape}")
            except MedsegError as error:
                builder.skip(str(image_path), str(error))
                continue
            foreground = mask.array.max(axis=0) > MASK_THRESHOLD  # grayscale or RGB-encoded masks
            builder.add_image(case_id, image)
            builder.add_label(case_id, image.with_array(foreground.astype(np.uint8)[None]))
            builder.summary.num_training += 1
        return builder.finish(
            {
                "name": "KvasirSEG",
                "description": "Kvasir-SEG colonoscopy polyp segmentation",
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "labels": {"background": 0, "polyp": 1},
                "numTraining": builder.summary.num_training,
                "file_ending": ".png",
                "licence": "Kvasir-SEG: research and education use",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="KvasirSEG",
        dataset_id=3,
        task_type="segmentation",
        summary="Kvasir-SEG colonoscopy polyps (2D, RGB, binary masks from JPEG)",
        source="folder with images/*.jpg and masks/*.jpg",
        convert=convert,
    )
)
