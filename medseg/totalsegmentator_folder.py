"""TotalSegmentator's weights read as one medseg model: `-m total` (a task name, the weights where
TotalSegmentator keeps them) or `-m WEIGHTS_DIR/total` (a folder of TotalSegmentator's
``DatasetNNN_*`` nnU-Net v2 task folders, and a task name after it).

A task is one nnU-Net model or several "parts" (``total``: five 1.5 mm models, each segmenting a
group of structures) whose label maps merge into one with the task's class names; ``fast`` is its
3 mm model. Each part is an nnU-Net v2 model folder (medseg.nnunet_model_folder); TotalSegmentator's
own steps around them (reorientation, resampling, cropping to the structures a rough model finds,
the merge) run in medseg.tasks.segmentation.inference.totalseg_predictor. The task table below
restates TotalSegmentator 2.18's task configuration (dataset ids, trainers, spacings, crops) for
the tasks medseg runs; class names come from the TotalSegmentator package when it is installed,
else from the parts' dataset.json files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder, ModelInfo, check_info_values
from medseg.planning.plans import ConfigurationPlan, Plans

LUNG_LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right")
PARTS_STEP = 0.8  # TotalSegmentator's sliding-window step for the multi-part tasks and their fast models (0.5 otherwise)
CROP_MARGIN_MM = 20.0  # the margin TotalSegmentator adds around the rough structures it crops to


@dataclass(frozen=True)
class TotalsegModel:
    """One mode of a task: its nnU-Net datasets (several: parts merged in this order), trainer and
    input spacing in mm along (x, y, z) (None: the image as it comes)."""

    datasets: tuple[int, ...]
    trainer: str
    spacing: tuple[float, float, float] | None
    configuration: str = "3d_fullres"
    plans: str = "nnUNetPlans"
    folds: tuple[int, ...] | None = (0,)  # None: every fold in the folder


@dataclass(frozen=True)
class TotalsegTask:
    name: str
    default: TotalsegModel
    fast: TotalsegModel | None = None
    fastest: TotalsegModel | None = None  # only a rough model for cropping
    crop: tuple[str, ...] = ()  # structures of the rough model the image is cropped to first
    robust_crop: bool = False  # crop with the 3 mm model instead of the 6 mm one
    modality: str = "CT"
    step: float = 0.5

    @property
    def rough_task(self) -> str:
        return "total_mr" if self.modality == "MR" else "total"


def _iso(mm: float) -> tuple[float, float, float]:
    return (mm, mm, mm)


TASKS: dict[str, TotalsegTask] = {task.name: task for task in (
    TotalsegTask(
        "total", TotalsegModel((291, 292, 293, 294, 295), "nnUNetTrainerNoMirroring", _iso(1.5)),
        fast=TotalsegModel((297,), "nnUNetTrainer_4000epochs_NoMirroring", _iso(3.0)),
        fastest=TotalsegModel((298,), "nnUNetTrainer_4000epochs_NoMirroring", _iso(6.0)), step=PARTS_STEP,
    ),
    TotalsegTask(
        "total_mr", TotalsegModel((850, 851), "nnUNetTrainer_2000epochs_NoMirroring", _iso(1.5)),
        fast=TotalsegModel((852,), "nnUNetTrainer_2000epochs_NoMirroring", _iso(3.0)),
        fastest=TotalsegModel((853,), "nnUNetTrainer_2000epochs_NoMirroring", _iso(6.0)), modality="MR", step=PARTS_STEP,
    ),
    TotalsegTask("lung_vessels", TotalsegModel((117,), "nnUNetTrainerSkeletonRecall", (0.703125, 0.703125, 1.0)), crop=LUNG_LOBES, robust_crop=True),
    TotalsegTask("pleural_pericard_effusion", TotalsegModel((315,), "nnUNetTrainer", None, folds=None), crop=LUNG_LOBES),
    TotalsegTask("liver_vessels", TotalsegModel((8,), "nnUNetTrainer", None), crop=("liver",)),
    TotalsegTask("liver_segments", TotalsegModel((570,), "nnUNetTrainerNoMirroring", (0.8046879768371582, 0.8046879768371582, 1.5)), crop=("liver",)),
    TotalsegTask("kidney_cysts", TotalsegModel((789,), "nnUNetTrainer_DASegOrd0_NoMirroring", _iso(1.5)), crop=("kidney_left", "kidney_right", "liver", "spleen", "colon")),
    TotalsegTask("cerebral_bleed", TotalsegModel((150,), "nnUNetTrainer", None), crop=("brain",)),
    TotalsegTask("hip_implant", TotalsegModel((260,), "nnUNetTrainer", None), crop=("femur_left", "femur_right", "hip_left", "hip_right")),
    TotalsegTask("trunk_cavities", TotalsegModel((343,), "nnUNetTrainer", _iso(1.5))),
    TotalsegTask("breasts", TotalsegModel((527,), "nnUNetTrainer_DASegOrd0_NoMirroring", _iso(1.5))),
    TotalsegTask("vertebrae_mr", TotalsegModel((756,), "nnUNetTrainer_DASegOrd0_NoMirroring", _iso(1.5)), modality="MR"),
)}


def weights_root() -> Path:
    """Where TotalSegmentator itself keeps its weights: $TOTALSEG_WEIGHTS_PATH, else
    $TOTALSEG_HOME_DIR/nnunet/results, else ~/.totalsegmentator/nnunet/results."""
    if os.environ.get("TOTALSEG_WEIGHTS_PATH"):
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    home = Path(os.environ["TOTALSEG_HOME_DIR"]) if os.environ.get("TOTALSEG_HOME_DIR") else Path.home() / ".totalsegmentator"
    return home / "nnunet" / "results"


def totalseg_spec(path: Path) -> tuple[Path, str] | None:
    """(weights folder, task) when ``path`` names a TotalSegmentator task: ``total`` alone, or
    ``WEIGHTS_DIR/total`` where WEIGHTS_DIR exists and ``total`` is no folder in it."""
    path = Path(path)
    if path.name not in TASKS or path.is_dir():
        return None
    if len(path.parts) == 1:
        return weights_root(), path.name
    return (path.parent, path.name) if path.parent.is_dir() else None


def _class_names_from_package(task: str) -> dict[int, str] | None:
    try:
        from totalsegmentator.map_to_binary import class_map
    except Exception:  # noqa: BLE001 - not installed, or an install that does not import: the weights' own names
        return None
    return dict(class_map.get(task) or {}) or None


def _part_names_from_package(task: str, dataset: int) -> dict[int, str] | None:
    try:
        from totalsegmentator import map_to_binary as maps
    except Exception:  # noqa: BLE001 - as above
        return None
    tables = {"total": ("class_map_5_parts", "map_taskid_to_partname_ct"), "total_mr": ("class_map_parts_mr", "map_taskid_to_partname_mr")}
    if task not in tables:
        return None
    parts, names = (getattr(maps, attribute, None) for attribute in tables[task])
    if not parts or not names or dataset not in names:
        return None
    return dict(parts[names[dataset]])


@dataclass
class TotalsegPart:
    """One nnU-Net model of a task's mode and how its label values map onto the task's."""

    dataset: int
    folder: ModelFolder
    names: dict[int, str] = field(default_factory=dict)  # its label value -> class name


class TotalSegmentatorFolder(ModelFolder):
    """Read-only. ``path`` is WEIGHTS/TASK (no folder of its own): what `-m` and Ray reopen it by."""

    def __init__(self, path: Path, info: ModelInfo, task: TotalsegTask, weights: Path):
        super().__init__(path, info)
        self.task, self.weights = task, weights
        self._parts: dict[str, list[TotalsegPart]] = {}

    @classmethod
    def open(cls, weights: Path, task_name: str) -> "TotalSegmentatorFolder":
        weights = Path(weights)
        task = TASKS[task_name]
        if not weights.is_dir():
            raise MedsegError(f"{weights}: no TotalSegmentator weights folder (set TOTALSEG_WEIGHTS_PATH or TOTALSEG_HOME_DIR, or give -m WEIGHTS_DIR/{task_name})")
        folder = cls(weights / task_name, ModelInfo(
            configuration="default", model="totalsegmentator", dataset_name=f"TotalSegmentator {task_name}", raw_folder="", preprocessed_folder="",
            file_ending=".nii.gz", labels={"background": 0}, extra={"source": "totalsegmentator", "totalseg_task": task_name, "weights": str(weights)},
        ), task, weights)
        labels = folder._task_labels()
        folder.info.labels = labels
        check_info_values(folder.info, folder.path)
        folder.__dict__["plans"] = _plans(task, labels)
        return folder

    def model(self, mode: str) -> TotalsegModel:
        model = getattr(self.task, mode)
        if model is None:
            raise MedsegError(f"TotalSegmentator task {self.task.name} has no {mode} model" + (" (--fast is for total and total_mr)" if mode == "fast" else ""))
        return model

    def parts(self, mode: str = "default") -> list[TotalsegPart]:
        """The nnU-Net folders of a mode, opened once, each with its label names."""
        if mode not in self._parts:
            model = self.model(mode)
            self._parts[mode] = [self._part(model, dataset) for dataset in model.datasets]
        return self._parts[mode]

    def _part(self, model: TotalsegModel, dataset: int) -> TotalsegPart:
        from medseg.nnunet_model_folder import NnunetModelFolder

        found = sorted(self.weights.glob(f"Dataset{dataset:03d}_*"))
        subfolder = f"{model.trainer}__{model.plans}__{model.configuration}"
        if not found or not (found[0] / subfolder).is_dir():
            where = found[0] / subfolder if found else self.weights / f"Dataset{dataset:03d}_*" / subfolder
            raise MedsegError(
                f"{where}: missing; TotalSegmentator task {self.task.name} needs it "
                f"(fetch its weights on a connected machine with `totalseg_download_weights -t {self.task.name}`, then copy {self.weights})"
            )
        folder = NnunetModelFolder.open(found[0] / subfolder)
        names = _part_names_from_package(self.task.name, dataset) if len(model.datasets) > 1 else None
        if names is None:
            names = {value: name for name, value in folder.info.labels.items() if value > 0}
        return TotalsegPart(dataset, folder, names)

    def _task_labels(self) -> dict[str, int]:
        """The task's class names and values: TotalSegmentator's own table when installed, else the
        default model's parts' labels one after another, as TotalSegmentator numbers them."""
        names = _class_names_from_package(self.task.name)
        if names is None:
            names, offset = {}, 0
            for part in self.parts("default"):
                for value, name in sorted(part.names.items()):
                    names[offset + value] = name
                offset += max(part.names, default=0)
        return {"background": 0, **{name: value for value, name in sorted(names.items())}}

    def folds(self) -> list[str]:
        return ["totalsegmentator"]

    def fold_finished(self, fold: str) -> bool:
        return True

    def checkpoint_path(self, fold: str, checkpoint: str = "auto") -> Path:
        raise MedsegError(f"{self.path}: a TotalSegmentator task runs its parts' own checkpoints")

    def load_module_states(self, fold: str, checkpoint: str = "auto") -> dict[str, dict]:
        raise MedsegError(f"{self.path}: a TotalSegmentator task runs its parts' own checkpoints")

    def postprocessing(self) -> dict:
        return {}

    def write_postprocessing(self, decision: dict) -> None:
        raise MedsegError(f"{self.path}: TotalSegmentator's weights are read-only to medseg")

    def input_profile(self) -> dict | None:
        return None

    def calibration(self) -> dict | None:
        return None


def _plans(task: TotalsegTask, labels: dict[str, int]) -> Plans:
    """What medseg's surfaces read of a model's plans (inputs, labels); the parts' own plans do the rest."""
    configuration = ConfigurationPlan(
        name="default", ndim=3, spacing=[], median_shape=[], patch_size=[], batch_size=1, batch_dice=False,
        normalization=[{"scheme": "totalsegmentator", "use_mask": False, "properties": {}}],
        architecture={"name": "totalsegmentator", "kwargs": {}}, resampling={}, data_identifier="",
    )
    return Plans(
        dataset_name=f"TotalSegmentator {task.name}", plans_name="totalsegmentator", planner={"mode": "totalsegmentator"},
        transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2], original_median_spacing=[], original_median_shape=[],
        labels=dict(labels), channel_names=[task.modality], foreground_intensity_properties_per_channel={},
        configurations={"default": configuration},
    )

