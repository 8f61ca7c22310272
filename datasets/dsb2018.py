"""2018 Data Science Bowl nuclei (stage1_train layout ``<id>/images/<id>.png``, ``<id>/masks/*.png``,
one binary PNG per nucleus) -> semantic labels (nucleus = 1) in labelsTr/, and the instance map
(nucleus k = k, uint16 PNG) in instancesTr/ for instance metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import MedsegError
from medseg.io import MedicalImage, read_image, write_image
from medseg_datasets.registry import Recipe, register_recipe, require_folder


def _case_folders(src: Path) -> list[Path]:
    root = src / "stage1_train" if (src / "stage1_train").is_dir() else src
    require_folder(root, "the DSB2018 stage1_train folder (<id>/images/<id>.png, <id>/masks/*.png)")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "images").is_dir())


def instance_map(mask_paths: list[Path], shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Stack per-nucleus binary masks into one map (k = k-th mask); returns it and the overlap count."""
    instances = np.zeros(shape, dtype=np.uint16)
    overlap = 0
    for index, mask_path in enumerate(mask_paths, start=1):
        mask = read_image(mask_path).array[0] > 0
        if mask.shape != shape:
            raise MedsegError(f"{mask_path}: mask size {mask.shape} differs from image size {shape}")
        overlap += int(np.count_nonzero(instances[mask]))
        instances[mask] = index
    return instances, overlap


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:
        for folder in _case_folders(Path(src)):
            case_id = folder.name
            try:
                image_path = folder / "images" / f"{case_id}.png"
                image = read_image(image_path)
                if image.num_channels == 1:
                    image = image.with_array(np.repeat(image.array, 3, axis=0))
                masks = sorted((folder / "masks").glob("*.png")) if (folder / "masks").is_dir() else []
                if not masks:
                    raise MedsegError(f"{folder / 'masks'}: no mask PNGs")
                instances, _ = instance_map(masks, image.spatial_shape)
            except MedsegError as error:
                builder.skip(case_id, str(error))
                continue
            builder.add_image(case_id, image)
            builder.add_label(case_id, image.with_array((instances > 0).astype(np.uint8)[None]))
            write_image(image.with_array(instances[None]), builder.path(f"instancesTr/{case_id}.png"))
            builder.summary.num_training += 1
        return builder.finish(
            {
                "name": "DSB2018",
                "description": "2018 Data Science Bowl nuclei, stage1_train (semantic labels; instances in instancesTr/)",
                "channel_names": {"0": "R", "1": "G", "2": "B"},
                "labels": {"background": 0, "nucleus": 1},
                "numTraining": builder.summary.num_training,
                "file_ending": ".png",
                "instances_folder": "instancesTr",
                "licence": "CC0",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="DSB2018",
        dataset_id=2,
        task_type="segmentation",
        summary="2018 Data Science Bowl nuclei (2D, RGB, instance masks -> semantic + instance maps)",
        source="stage1_train folder (or its parent) with <id>/images/<id>.png and <id>/masks/*.png",
        convert=convert,
    )
)
