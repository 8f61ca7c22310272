"""``medseg datasets check --fix-duplicates``: exact duplicate cases (the same image content, which
`datasets check` refuses: they would sit on both sides of a fold) are set aside, never deleted.

For each duplicate the check found (the later case; the first of its set is kept), its image files
and label file move to ``duplicates_removed/`` inside the dataset, under the same relative paths; a
classification dataset's rows move from labelsTr.csv / labelsTs.csv to the same-named file there;
dataset.json's numTraining follows; ``duplicates_removed/removed.csv`` lists case, kept case and
files. Moving them back restores the dataset (and numTraining)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import DatasetError

FOLDER = "duplicates_removed"


def _move(path: Path, dataset: Path, target_root: Path) -> str:
    relative = path.relative_to(dataset)
    target = target_root / relative
    if target.exists():
        raise DatasetError(f"{target}: already there (a case set aside before?); move it back or away first")
    target.parent.mkdir(parents=True, exist_ok=True)
    path.replace(target)
    return str(relative)


def _move_table_rows(dataset: Path, target_root: Path, table: str, case_ids: set[str]) -> None:
    """Move the rows of ``case_ids`` from dataset/TABLE to target_root/TABLE (appending there)."""
    source = dataset / table
    if not source.is_file() or not case_ids:
        return
    with source.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    kept = [row for row in rows if row and row[0] not in case_ids]
    moved = [row for row in rows if row and row[0] in case_ids]
    target = target_root / table
    new_file = not target.is_file()
    with target.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(header)
        writer.writerows(moved)
    staging = source.with_name(source.name + ".partial")
    with staging.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)
    staging.replace(source)  # the table is never left half-written


def set_aside_duplicates(dataset: Path, duplicates: list[tuple]) -> list[dict]:
    """``duplicates``: (case, kept case id) pairs from ``check_dataset`` -> what was set aside."""
    dataset = Path(dataset)
    target_root = dataset / FOLDER
    removed = []
    for case, kept in duplicates:
        split = "Ts" if case.images[0].parent.name == "imagesTs" else "Tr"
        files = [_move(path, dataset, target_root) for path in dict.fromkeys(case.images)]
        if case.label is not None and case.label.is_file():
            files.append(_move(case.label, dataset, target_root))
        removed.append({"case": case.case_id, "split": split, "kept_case": kept, "files": files})
    for split in ("Tr", "Ts"):
        _move_table_rows(dataset, target_root, f"labels{split}.csv", {r["case"] for r in removed if r["split"] == split})
    description = json.loads((dataset / "dataset.json").read_text())
    if "numTraining" in description:
        description["numTraining"] = int(description["numTraining"]) - sum(r["split"] == "Tr" for r in removed)
        write_json_atomic(dataset / "dataset.json", description)
    listing = target_root / "removed.csv"
    new_file = not listing.is_file()
    with listing.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["case", "split", "kept_case", "files"])
        writer.writerows([[r["case"], r["split"], r["kept_case"], ";".join(r["files"])] for r in removed])
    return removed
