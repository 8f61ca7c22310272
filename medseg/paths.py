"""Where medseg keeps datasets and results: one root folder (MEDSEG_ROOT, default ./medseg_data)
holding raw/ (nnU-Net v2 raw layout), preprocessed/ and results/; and the folder and naming rules
of an experiment's files (plans names, the preprocessed folder, the plans file, the model folder
of a configuration), which every stage and task share without importing either."""

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


DEFAULT_PLANS_NAME = "medsegPlans"


def default_plans_name(model: str) -> str:
    """The plain U-Net plans as nnU-Net names them; every other family or model spec
    (``xlstm_unet_bot[vil_directions=forward]``) plans into its own file, so planning a second one
    never overwrites the first one's plans."""
    from medseg.models.spec import parse_model_spec

    spec = parse_model_spec(model)
    return DEFAULT_PLANS_NAME if str(spec) == "unet" else f"{DEFAULT_PLANS_NAME}_{spec.plans_suffix}"


def preprocessed_folder(raw_folder: Path) -> Path:
    return preprocessed_root() / raw_folder.name


def cropped_cases_folder(raw_folder: Path) -> Path:
    """Where the dataset check keeps the cases it read, cropped, for preprocessing (medseg.tasks.segmentation.preprocessing.cropping)."""
    return preprocessed_folder(raw_folder) / "cropped"


def plans_path(raw_folder: Path, plans_name: str) -> Path:
    return preprocessed_folder(raw_folder) / f"{plans_name}.json"


def load_plans(raw_folder: Path, plans_name: str = DEFAULT_PLANS_NAME):
    from medseg.planning.plans import Plans

    return Plans.load(plans_path(raw_folder, plans_name))


def configuration_model_folder(raw_folder: Path, plans, configuration_name: str) -> Path:
    architecture = plans.configuration(configuration_name).architecture["name"]
    return model_folder(raw_folder.name, architecture, plans.plans_name, configuration_name)
