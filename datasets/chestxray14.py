"""NIH ChestX-ray14 -> a multi-label classification dataset (14 findings; 'No Finding' = all zeros).

Source: any folder holding the PNGs (the full release's images_*/ or the NIH-1000 subset's
train/valid/test folders) and Data_Entry_2017*.csv[.gz]. Split: a train/valid/test folder in the
image's path wins, else test_list.txt when present, else training. Test images go to imagesTs/ with
labelsTs.csv. Extra columns keep split, patient (group splits by it to avoid leakage) and view."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import DatasetError, MedsegError
from medseg.io import read_image
from medseg_datasets.registry import Recipe, register_recipe

FINDINGS = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
]
_SPLIT_FOLDERS = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "test": "test"}


def _open_text(path: Path):
    return gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="")


def read_findings_table(src: Path) -> dict[str, dict[str, str]]:
    tables = sorted(src.rglob("Data_Entry_2017*.csv*"))
    if not tables:
        raise DatasetError(f"{src}: no Data_Entry_2017*.csv[.gz] findings table found")
    with _open_text(tables[0]) as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "Image Index" not in reader.fieldnames or "Finding Labels" not in reader.fieldnames:
            raise DatasetError(f"{tables[0]}: expected columns 'Image Index' and 'Finding Labels'")
        return {row["Image Index"]: row for row in reader}


def finding_vector(finding_labels: str) -> list[int]:
    """'Cardiomegaly|Effusion' -> 0/1 vector over FINDINGS; unknown names raise."""
    names = {name.strip() for name in finding_labels.split("|") if name.strip() and name.strip() != "No Finding"}
    unknown = names - set(FINDINGS)
    if unknown:
        raise MedsegError(f"unknown finding(s) {sorted(unknown)}")
    return [int(name in names) for name in FINDINGS]


def _split_of(path: Path, test_names: set[str]) -> str:
    for part in path.parts[::-1]:
        if part.lower() in _SPLIT_FOLDERS:
            return _SPLIT_FOLDERS[part.lower()]
    return "test" if path.name in test_names else "train"


def convert(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    src = Path(src)
    table = read_findings_table(src)
    test_list = src / "test_list.txt"
    test_names = set(test_list.read_text().split()) if test_list.is_file() else set()
    rows = {"Tr": [], "Ts": []}
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:
        for image_path in sorted(src.rglob("*.png")):
            name = image_path.name
            try:
                if name not in table:
                    raise MedsegError(f"{image_path}: not in the findings table")
                targets = finding_vector(table[name]["Finding Labels"])
                image = read_image(image_path)
                if image.num_channels != 1:  # a few releases' PNGs are RGB(A); X-rays are grayscale
                    image = image.with_array(image.array.mean(axis=0, keepdims=True).round().astype(np.uint8))
            except MedsegError as error:
                builder.skip(str(image_path), str(error))
                continue
            split = _split_of(image_path.relative_to(src), test_names)
            target_split = "Ts" if split == "test" else "Tr"
            case_id = Path(name).stem
            builder.add_image(case_id, image, split=target_split)
            info = table[name]
            rows[target_split].append([case_id, split, info.get("Patient ID", ""), info.get("View Position", "")] + targets)
            builder.summary.num_training += target_split == "Tr"
            builder.summary.num_test += target_split == "Ts"
        for split, split_rows in rows.items():
            if not split_rows:
                continue
            with builder.path(f"labels{split}.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["case", "split", "group", "view"] + FINDINGS)
                writer.writerows(split_rows)
        return builder.finish(
            {
                "name": "ChestXray14",
                "task": "classification",
                "description": "NIH ChestX-ray14 multi-label thorax findings",
                "channel_names": {"0": "X-ray"},
                "classes": FINDINGS,
                "multi_label": True,
                "numTraining": builder.summary.num_training,
                "file_ending": ".png",
                "licence": "NIH ChestX-ray14 terms",
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="ChestXray14",
        dataset_id=4,
        task_type="classification",
        summary="NIH ChestX-ray14 thorax findings (2D, multi-label, 14 classes)",
        source="folder with the PNGs (any depth) and Data_Entry_2017*.csv[.gz]",
        convert=convert,
    )
)
