"""Where medseg keeps datasets and results: one root folder (MEDSEG_ROOT, default ./medseg_data)
holding raw/ (nnU-Net v2 raw layout), preprocessed/ and results/."""

from __future__ import annotations

import os
import re
from pathlib import Path

from medseg.errors import DatasetError

ROOT_VARIABLE = "MEDSEG_ROOT"
_DATASET_NAME = re.compile(r"^Dataset(\d{3})_(.+)$")


def data_root() -> Path:
    return Path(os.environ.get(ROOT_VARIABLE, "medseg_data")).expanduser().resolve()


def raw_root() -> Path:
    return data_root() / "raw"


def results_root() -> Path:
    return data_root() / "results"


def preprocessed_root() -> Path:
    return data_root() / "preprocessed"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{dataset_id:03d}_{name}"


def split_dataset_name(folder_name: str) -> tuple[int, str] | None:
    """'Dataset003_KvasirSEG' -> (3, 'KvasirSEG'); None for other names."""
    match = _DATASET_NAME.match(folder_name)
    return (int(match.group(1)), match.group(2)) if match else None


def find_raw_dataset(task: str, root: Path | None = None) -> Path:
    """Resolve a task given as a path, a folder name, a bare name ('KvasirSEG') or an id ('3', '003')."""
    candidate = Path(task)
    if candidate.is_dir() and (candidate / "dataset.json").exists():
        return candidate.resolve()
    root = root or raw_root()
    folders = sorted(p for p in root.glob("Dataset*") if p.is_dir()) if root.is_dir() else []
    matches = []
    for folder in folders:
        parsed = split_dataset_name(folder.name)
        if folder.name == task or (parsed and (parsed[1] == task or (task.isdigit() and parsed[0] == int(task)))):
            matches.append(folder)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        known = ", ".join(f.name for f in folders) or "none"
        raise DatasetError(f"no raw dataset '{task}' under {root} (found: {known})")
    raise DatasetError(f"task '{task}' matches several datasets: {', '.join(m.name for m in matches)}")


def model_folder(dataset_name: str, model: str, plans_name: str, configuration: str) -> Path:
    """Trained model of one configuration: plans.json, dataset.json, model.json and fold_*/."""
    return results_root() / dataset_name / f"{model}__{plans_name}__{configuration}"
