"""Kermany et al. 2018 paediatric chest X-rays -> a classification dataset: normal vs pneumonia
(``KermanyPneumonia``) or normal / bacterial / viral (``KermanyPneumonia3``).

Source: the release layout ``{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`` (or the class folders
directly). ``test`` goes to imagesTs/ with labelsTs.csv; ``train`` and ``val`` to training. The file
names carry the patient (``person1000_bacteria_2931.jpeg``: patient ``person1000``, bacterial;
``IM-0115-0001.jpeg`` / ``NORMAL2-IM-0381-0001.jpeg``: patient ``IM-0115`` / ``NORMAL2-IM-0381``),
kept in the ``group`` column so no patient sits on both sides of a fold.

Exact duplicates (the same pixels; the shared training split holds 26 such pairs) would leak
between folds and fail `medseg datasets check`: the first file of each set (in path order) is kept,
the others are reported as skipped and listed in ``duplicates.csv`` (dropped file, kept case). A set
whose files disagree on the class is dropped whole (no label can be trusted)."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.errors import DatasetError, MedsegError
from medseg.io import read_image
from medseg_datasets.registry import Recipe, register_recipe

_SPLITS = {"train": "Tr", "val": "Tr", "valid": "Tr", "validation": "Tr", "test": "Ts"}
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)  # person447_virus_921_1 too
_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-", re.IGNORECASE)  # IM-0429-0001-0002 too: patient IM-0429


def image_class(path: Path) -> tuple[str, str, str]:
    """-> (folder class: normal|pneumonia, subtype: normal|bacterial|viral, patient id)."""
    folder = path.parent.name.upper()
    stem = path.stem
    if folder == "NORMAL":
        match = _NORMAL.match(stem)
        return "normal", "normal", match.group(1) if match else stem
    if folder == "PNEUMONIA":
        match = _PERSON.match(stem)
        if not match:
            raise MedsegError(f"{path}: a PNEUMONIA file name without patient and subtype (expected personN_bacteria_M or personN_virus_M)")
        return "pneumonia", "bacterial" if match.group(2).lower() == "bacteria" else "viral", match.group(1)
    raise MedsegError(f"{path}: not in a NORMAL or PNEUMONIA folder")


def _split(path: Path, src: Path) -> str:
    for part in path.relative_to(src).parts[:-2][::-1]:
        if part.lower() in _SPLITS:
            return _SPLITS[part.lower()]
    return "Tr"


def _convert(src: Path, out: Path, overwrite: bool, progress, three_class: bool) -> ConversionSummary:
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png") and p.parent.name.upper() in ("NORMAL", "PNEUMONIA"))
    if not files:
        raise DatasetError(f"{src}: no NORMAL/ or PNEUMONIA/ folders with images (expected the release layout train/NORMAL/*.jpeg)")
    classes = ["normal", "bacterial", "viral"] if three_class else ["normal", "pneumonia"]
    rows: dict[str, list[list[str]]] = {"Tr": [], "Ts": []}
    seen: dict[str, tuple[str, str, Path]] = {}  # pixel digest -> (case, label, file) kept
    dropped: list[list[str]] = []
    with RawDatasetBuilder(out, ".png", overwrite, progress) as builder:
        loaded = []
        for path in files:
            try:
                folder_class, subtype, patient = image_class(path)
                image = read_image(path)
                if image.num_channels != 1:  # X-rays saved as RGB: the channels are equal
                    image = image.with_array(image.array.mean(axis=0, keepdims=True).round().astype(np.uint8))
            except MedsegError as error:
                builder.skip(str(path), str(error))
                continue
            label = subtype if three_class else folder_class
            digest = hashlib.sha256(np.ascontiguousarray(image.array).tobytes() + str(image.array.shape).encode()).hexdigest()
            loaded.append((path, image, label, patient, digest))
        conflicting = _conflicts(loaded)
        for path, image, label, patient, digest in loaded:
            case_id = f"{path.parent.name.lower()}_{path.stem}"
            if digest in conflicting:
                builder.skip(str(path), "an exact duplicate of an image labelled with another class: the whole set is dropped")
                dropped.append([str(path.relative_to(src)), "", "conflicting labels"])
                continue
            if digest in seen:
                kept_case, _, kept_file = seen[digest]
                builder.skip(str(path), f"an exact duplicate of {kept_file.relative_to(src)} (same pixels): kept as case {kept_case}")
                dropped.append([str(path.relative_to(src)), kept_case, "same pixels"])
                continue
            seen[digest] = (case_id, label, path)
            split = _split(path, src)
            builder.add_image(case_id, image, split=split)
            rows[split].append([case_id, label, patient, path.parent.parent.name if split == "Tr" else "test"])
            builder.summary.num_training += split == "Tr"
            builder.summary.num_test += split == "Ts"
        for split, split_rows in rows.items():
            if split_rows:
                with builder.path(f"labels{split}.csv").open("w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["case", "label", "group", "source_split"])
                    writer.writerows(split_rows)
        if dropped:
            with builder.path("duplicates.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["dropped_file", "kept_case", "why"])
                writer.writerows(dropped)
        return builder.finish(
            {
                "name": "KermanyPneumonia3" if three_class else "KermanyPneumonia",
                "task": "classification",
                "description": "Paediatric chest X-rays (Guangzhou; Kermany et al. 2018): " + " / ".join(classes),
                "channel_names": {"0": "X-ray"},
                "classes": classes,
                "multi_label": False,
                "numTraining": builder.summary.num_training,
                "file_ending": ".png",
                "licence": "CC BY 4.0 (Mendeley Data doi:10.17632/rscbjbr9sj.2)",
            }
        )


def _conflicts(loaded) -> set[str]:
    labels: dict[str, set[str]] = {}
    for _, _, label, _, digest in loaded:
        labels.setdefault(digest, set()).add(label)
    return {digest for digest, names in labels.items() if len(names) > 1}


def convert_two_class(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    return _convert(src, out, overwrite, progress, three_class=False)


def convert_three_class(src: Path, out: Path, overwrite: bool = False, progress=None) -> ConversionSummary:
    return _convert(src, out, overwrite, progress, three_class=True)


SOURCE = "the release folder: {train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg (or NORMAL/ and PNEUMONIA/ directly)"
register_recipe(Recipe(
    name="KermanyPneumonia", dataset_id=7, task_type="classification", source=SOURCE, convert=convert_two_class,
    summary="paediatric chest X-rays, normal vs pneumonia (2D, 2 classes; patients grouped; exact duplicates kept once)",
))
register_recipe(Recipe(
    name="KermanyPneumonia3", dataset_id=8, task_type="classification", source=SOURCE, convert=convert_three_class,
    summary="paediatric chest X-rays, normal / bacterial / viral pneumonia (2D, 3 classes; patients grouped; exact duplicates kept once)",
))
