"""The labels table of a classification dataset (labelsTr.csv / labelsTs.csv); see medseg.data.layout."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from medseg.data.layout import DatasetDescription


@dataclass
class LabelsTable:
    """Targets per case: multi-label rows are 0/1 vectors over classes, multi-class rows one index."""

    path: Path
    targets: dict[str, list[int] | int]
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # case -> other columns (split, group...)


def read_labels_table(description: DatasetDescription, split: str = "Tr") -> tuple[LabelsTable | None, list[str]]:
    """Read labels{split}.csv; return the table (None if unusable) and every problem with its row."""
    path = description.folder / f"labels{split}.csv"
    if not path.is_file():
        return None, ([f"{path}: missing (classification datasets keep their targets here)"] if split == "Tr" else [])
    return read_labels_csv(path, description)


def read_labels_csv(path: Path, description: DatasetDescription) -> tuple[LabelsTable | None, list[str]]:
    """A labels table at any path, against the classes of ``description``."""
    problems: list[str] = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "case" not in columns:
            return None, [f"{path}: needs a 'case' column, has {columns}"]
        if description.multi_label:
            missing = [c for c in description.classes if c not in columns]
            if missing:
                return None, [f"{path}: multi-label table lacks class columns {missing}"]
            target_columns = description.classes
        else:
            if "label" not in columns:
                return None, [f"{path}: multi-class table needs a 'label' column, has {columns}"]
            target_columns = ["label"]
        table = LabelsTable(path, {})
        for row_number, row in enumerate(reader, start=2):
            case = (row.get("case") or "").strip()
            where = f"{path}:{row_number}"
            if not case:
                problems.append(f"{where}: empty case id")
                continue
            if case in table.targets:
                problems.append(f"{where}: duplicate case {case!r}")
                continue
            if description.multi_label:
                values = [(row.get(c) or "").strip() for c in description.classes]
                bad = [c for c, v in zip(description.classes, values) if v not in ("0", "1")]
                if bad:
                    problems.append(f"{where}: class columns {bad} must be 0 or 1")
                    continue
                table.targets[case] = [int(v) for v in values]
            else:
                name = (row.get("label") or "").strip()
                if name not in description.classes:
                    problems.append(f"{where}: label {name!r} is not one of the declared classes {description.classes}")
                    continue
                table.targets[case] = description.classes.index(name)
            table.extra[case] = {k: v for k, v in row.items() if k not in target_columns and k != "case" and k is not None}
    return table, problems
