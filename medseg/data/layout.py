"""The raw dataset layout: nnU-Net v2's, so existing nnU-Net datasets work unchanged.

Segmentation (nnU-Net v2)::

    DatasetXXX_Name/
      dataset.json            channel_names, labels, numTraining, file_ending
      imagesTr/{case}_{XXXX}{file_ending}    one file per channel XXXX (or one RGB file for 3 channels)
      labelsTr/{case}{file_ending}
      imagesTs/{case}_{XXXX}{file_ending}    optional, no labels

Classification (medseg's own, same image naming)::

    DatasetXXX_Name/
      dataset.json            "task": "classification", "classes": [...], "multi_label": true|false,
                              channel_names, file_ending
      imagesTr/{case}_{XXXX}{file_ending}
      labelsTr.csv            multi-label: columns case,<class>,<class>,...  with 0/1 values
                              multi-class: columns case,label               with a class name per row
                              extra columns (split, group, size_mm, ...) are kept as metadata
      imagesTs/, labelsTs.csv optional
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medseg.atomic import write_text_atomic
from medseg.errors import DatasetError

# 2D formats in which one file may carry several channels (RGB), as nnU-Net allows for natural images
NATURAL_IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


# dataset layouts (dataset.json "task"); tasks say which they learn from (Task.dataset_types)
SEGMENTATION_LAYOUT, CLASSIFICATION_LAYOUT = "segmentation", "classification"
DATASET_TYPES = (SEGMENTATION_LAYOUT, CLASSIFICATION_LAYOUT)


@dataclass
class DatasetDescription:
    """Parsed dataset.json."""

    folder: Path
    name: str
    task_type: str  # the layout, one of DATASET_TYPES (not a task: several tasks learn from one layout)
    channel_names: dict[int, str]
    file_ending: str
    # segmentation: the label map a model outputs, name -> value (without "ignore"; for a
    # region-based dataset each region's name -> its value in regions_class_order)
    labels: dict[str, int] = field(default_factory=dict)
    regions: dict[str, list[int]] | None = None  # region-based: region name -> the reference label values it covers
    ignore_label: int | None = None  # reference voxels of this value are left out of training and scoring
    classes: list[str] = field(default_factory=list)  # classification
    multi_label: bool = False
    num_training: int | None = None
    raw: dict = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def label_values(self) -> set[int]:
        """The values a reference label map may hold."""
        values = set(self.labels.values()) | {0}
        for region in (self.regions or {}).values():
            values |= set(region)
        return values | ({self.ignore_label} if self.ignore_label is not None else set())


@dataclass
class Case:
    case_id: str
    images: list[Path]  # channel files in channel order (may hold one multi-channel file)
    label: Path | None = None
    multichannel_file: bool = False  # one file holds all channels (RGB PNG/JPEG, nnU-Net's natural images)


def _flatten_label_value(value) -> list[int]:
    # region-based datasets declare regions as lists of label values
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


IGNORE = "ignore"  # nnU-Net's name for the label of unannotated voxels


def _parse_labels(description: DatasetDescription, labels: dict, class_order, path: Path, problems: list[str]) -> None:
    """nnU-Net v2's labels: name -> value, or name -> list of values (a region) with
    ``regions_class_order``; an ``ignore`` label (the highest value) marks unannotated voxels."""
    flat = {name: _flatten_label_value(value) for name, value in labels.items()}
    if IGNORE in flat:
        ignore = flat.pop(IGNORE)
        if len(ignore) != 1:
            problems.append(f"{path}: the '{IGNORE}' label must be one value, got {labels[IGNORE]}")
        else:
            description.ignore_label = ignore[0]
            highest = max(v for values in flat.values() for v in values) if flat else 0
            if ignore[0] <= highest:
                problems.append(f"{path}: the '{IGNORE}' label must have the highest value (nnU-Net's rule), got {ignore[0]} with labels up to {highest}")
    if 0 not in {v for values in flat.values() for v in values}:
        problems.append(f"{path}: 'labels' must declare background as 0")
    regional = any(isinstance(value, (list, tuple)) for name, value in labels.items() if name != IGNORE)
    if not regional:
        if class_order is not None:
            problems.append(f"{path}: 'regions_class_order' is given but no label is a region (a list of values)")
        plain = [values[0] for values in flat.values()]
        if len(plain) != len(set(plain)):
            problems.append(f"{path}: two label names share one value: {labels}")
        description.labels = {name: values[0] for name, values in flat.items()}
        return
    regions = {name: values for name, values in flat.items() if values != [0]}
    background = [name for name, values in flat.items() if values == [0]]
    if not isinstance(class_order, list) or len(class_order) != len(regions):
        problems.append(
            f"{path}: region-based labels need 'regions_class_order', one label value per region ({len(regions)}: {', '.join(regions)}), "
            f"got {class_order!r}"
        )
        return
    order = [int(v) for v in class_order]
    if len(set(order)) != len(order) or 0 in order:
        problems.append(f"{path}: 'regions_class_order' must give each region its own non-zero value, got {class_order}")
        return
    description.regions = regions
    description.labels = {**{name: 0 for name in background[:1]}, **dict(zip(regions, order))}


def parse_labels(content: dict, source: Path) -> tuple[dict[str, int], dict[str, list[int]] | None, int | None]:
    """(label map, regions, ignore label) of a dataset.json's content; a problem is an error naming ``source``."""
    description = DatasetDescription(Path(source).parent, "", SEGMENTATION_LAYOUT, {}, "")
    problems: list[str] = []
    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        problems.append(f"{source}: 'labels' must map names to values, e.g. {{\"background\": 0, \"liver\": 1}}")
    else:
        try:
            _parse_labels(description, labels, content.get("regions_class_order"), Path(source), problems)
        except (TypeError, ValueError):
            problems.append(f"{source}: label values must be integers, got {labels}")
    if problems:
        raise DatasetError("; ".join(problems))
    return description.labels, description.regions, description.ignore_label


def parse_dataset_json(folder: Path) -> tuple[DatasetDescription | None, list[str]]:
    """Parse folder/dataset.json; return the description (None if unusable) and every problem found."""
    path = folder / "dataset.json"
    if not path.is_file():
        return None, [f"{path}: missing (every raw dataset needs a dataset.json)"]
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, [f"{path}: not valid JSON ({error})"]
    if not isinstance(raw, dict):
        return None, [f"{path}: must hold a JSON object"]
    problems = []
    task_type = raw.get("task", SEGMENTATION_LAYOUT)
    if task_type not in DATASET_TYPES:
        problems.append(f"{path}: 'task' must be 'segmentation' or 'classification', got {task_type!r}")
    channel_names = raw.get("channel_names", raw.get("modality"))
    if not isinstance(channel_names, dict) or not channel_names:
        problems.append(f"{path}: 'channel_names' must map channel indices to names, e.g. {{\"0\": \"T2\"}}")
        channel_names = {}
    try:
        channels = {int(k): str(v) for k, v in channel_names.items()}
        if sorted(channels) != list(range(len(channels))):
            problems.append(f"{path}: channel indices must be 0..{len(channels) - 1}, got {sorted(channels)}")
    except ValueError:
        problems.append(f"{path}: channel indices must be integers, got {list(channel_names)}")
        channels = {}
    file_ending = raw.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        problems.append(f"{path}: 'file_ending' must be given, e.g. \".nii.gz\"")
        file_ending = ""
    description = DatasetDescription(folder, str(raw.get("name", folder.name)), task_type, channels, file_ending, raw=raw)
    if task_type == SEGMENTATION_LAYOUT:
        labels = raw.get("labels")
        if not isinstance(labels, dict) or not labels:
            problems.append(f"{path}: 'labels' must map names to values, e.g. {{\"background\": 0, \"liver\": 1}}")
        else:
            try:
                _parse_labels(description, labels, raw.get("regions_class_order"), path, problems)
            except (TypeError, ValueError):
                problems.append(f"{path}: label values must be integers, got {labels}")
    else:
        classes = raw.get("classes")
        if not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes):
            problems.append(f"{path}: 'classes' must be a list of distinct class names")
        else:
            description.classes = [str(c) for c in classes]
        description.multi_label = bool(raw.get("multi_label", False))
    if "numTraining" in raw:
        try:
            description.num_training = int(raw["numTraining"])
        except (TypeError, ValueError):
            problems.append(f"{path}: 'numTraining' must be an integer")
    return (description if not problems else None), problems


def load_dataset_description(folder: str | Path) -> DatasetDescription:
    """Parse dataset.json or raise DatasetError listing every problem."""
    description, problems = parse_dataset_json(Path(folder))
    if description is None:
        raise DatasetError("; ".join(problems))
    return description


def list_cases(description: DatasetDescription, split: str = "Tr") -> tuple[list[Case], list[str]]:
    """Cases of imagesTr (split='Tr') or imagesTs ('Ts'), sorted by id, and naming problems found."""
    images_folder = description.folder / f"images{split}"
    problems: list[str] = []
    if not images_folder.is_dir():
        if split == "Tr":
            problems.append(f"{images_folder}: missing folder")
        return [], problems
    ending = description.file_ending
    channels_by_case: dict[str, dict[int, Path]] = {}
    for path in sorted(images_folder.iterdir()):
        if path.name.startswith("."):
            continue
        if not path.name.endswith(ending):
            problems.append(f"{path}: does not end with the dataset's file_ending {ending!r}")
            continue
        match = CHANNEL_SUFFIX.match(path.name[: -len(ending)])
        if not match:
            problems.append(f"{path}: name must be {{case}}_{{XXXX}}{ending} with a 4-digit channel index")
            continue
        channels_by_case.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = []
    for case_id, channel_files in sorted(channels_by_case.items()):
        label_path = None
        if description.task_type == SEGMENTATION_LAYOUT and split == "Tr":
            label_path = description.folder / "labelsTr" / f"{case_id}{ending}"
        expected = set(range(description.num_channels))
        present = set(channel_files)
        single_multichannel = present == {0} and description.num_channels > 1 and ending in NATURAL_IMAGE_ENDINGS
        cases.append(Case(case_id, [channel_files[k] for k in sorted(channel_files)], label_path, single_multichannel))
        if present != expected and not single_multichannel:
            missing = sorted(expected - present)
            extra = sorted(present - expected)
            detail = []
            if missing:
                detail.append("missing channel(s) " + ", ".join(f"_{m:04d}" for m in missing))
            if extra:
                detail.append("undeclared channel(s) " + ", ".join(f"_{e:04d}" for e in extra))
            problems.append(f"{images_folder / case_id}: {'; '.join(detail)} (dataset.json declares {description.num_channels})")
    return cases, problems


def write_dataset_json(folder: Path, content: dict) -> None:
    """Write dataset.json atomically (temp file + rename)."""
    write_text_atomic(folder / "dataset.json", json.dumps(content, indent=2) + "\n")
