"""The one reader and writer of a model folder (``results/DatasetNNN/MODEL__PLANS__CONFIG/``):

    plans.json            the plans the folds were trained with
    dataset.json          the raw dataset's description (labels, channels, file ending)
    model.json            what inference needs besides the plans (ModelInfo below)
    postprocessing.json   what cross-validation decided to apply after prediction
    card.json             the model card (medseg.model_card): use, licence, data, metrics, weight checksums
    input_profile.json    what the training images looked like, to check inputs (medseg.audit.input_profile)
    calibration.json      expected Dice per structure and review thresholds, fitted by cross-validation
    probability_calibration.json   a classifier's temperature and test-time-view choice, fitted by cross-validation
    crossval_summary.json the pooled cross-validation report
    fold_K/               checkpoint_{latest,best,final}.pt, log.json, progress.png, validation/

The trainer, the final validation, cross-validation, the predictor and the CLI all go through
``ModelFolder``, so a malformed folder gives one clear error naming the file and what is wrong."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.planning.plans import ConfigurationPlan, Plans

MODEL_INFO_VERSION = 1
CHECKPOINTS = ("final", "best", "latest")


@dataclass
class ModelInfo:
    """model.json: the model's identity and where its training data came from."""

    configuration: str
    model: str  # registered model family
    dataset_name: str
    raw_folder: str
    preprocessed_folder: str
    file_ending: str
    labels: dict[str, int]
    task: str = "segmentation"  # registered task (medseg.tasks); folders written before tasks were plug-ins are segmentation
    mirror_axes: list[int] = field(default_factory=list)  # test-time mirroring allowed by the training augmentation
    extra: dict = field(default_factory=dict)  # task-specific entries
    medseg_version: str = ""
    version: int = MODEL_INFO_VERSION

    @property
    def algorithm_name(self) -> str:
        """What DICOM outputs and manifests name as the algorithm."""
        model = f"nnU-Net {self.extra.get('trainer', '')}".strip() if self.extra.get("source") == "nnunetv2" else self.model
        return f"medseg {model} {self.dataset_name} {self.configuration}"

    @classmethod
    def from_dict(cls, content: dict, source: Path) -> "ModelInfo":
        if not isinstance(content, dict):
            raise MedsegError(f"{source}: expected a JSON object")
        known = {f.name for f in fields(cls)}
        missing = [name for name in REQUIRED_INFO if name not in content]
        if missing:
            raise MedsegError(f"{source}: model.json lacks {', '.join(missing)}; the folder is damaged or was not written by medseg")
        version = content.get("version", MODEL_INFO_VERSION)
        if version != MODEL_INFO_VERSION:
            raise MedsegError(f"{source}: model.json version {version!r} is not supported (expected {MODEL_INFO_VERSION})")
        try:
            info = cls(**{k: v for k, v in content.items() if k in known})
        except (TypeError, ValueError, AttributeError) as error:
            raise MedsegError(f"{source}: malformed model.json ({error})") from None
        check_info_values(info, source)
        return info


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_info_values(info: ModelInfo, source: Path) -> None:
    """model.json's values that reach paths, label maps and DICOM headers: the file ending names
    every output file (a ``.slices/../../x`` ending wrote outside the output folder), labels become
    voxel values and segment names. Raises naming the file, the key and the value."""
    from medseg.io import IMAGE_SUFFIXES

    ending = info.file_ending
    if not isinstance(ending, str) or ending.lower() not in IMAGE_SUFFIXES:
        raise MedsegError(f"{source}: file_ending = {ending!r}: expected an image file ending ({', '.join(IMAGE_SUFFIXES)})")
    labels = info.labels
    if not isinstance(labels, dict):  # empty for classifiers (their classes are in the plans)
        raise MedsegError(f"{source}: labels = {labels!r}: expected names mapped to label values")
    for name, value in labels.items():
        if not name.strip() or len(name) > 64 or any(ord(c) < 32 for c in name):
            raise MedsegError(f"{source}: labels: name {name!r}: expected 1 to 64 printable characters")
        if not _is_int(value) or not 0 <= value < 65536:
            raise MedsegError(f"{source}: labels.{name} = {value!r}: expected a label value from 0 to 65535")
    values = list(labels.values())
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        names = [n for n, v in labels.items() if v == duplicates[0]]
        raise MedsegError(f"{source}: labels: value {duplicates[0]} is given to {', '.join(names)}; each label needs its own value")
    axes = info.mirror_axes
    if not isinstance(axes, list) or not all(_is_int(a) and 0 <= a <= 2 for a in axes):
        raise MedsegError(f"{source}: mirror_axes = {axes!r}: expected a list of axes among 0, 1, 2")
    if not isinstance(info.extra, dict):
        raise MedsegError(f"{source}: extra = {info.extra!r}: expected an object")


def read_json_object(path: Path) -> dict:
    """A JSON object from a model folder's file (medseg's, nnU-Net's, a bundle's), or an error naming it."""
    try:
        content = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{path}: unreadable ({error})") from None
    if not isinstance(content, dict):
        raise MedsegError(f"{path}: expected a JSON object")
    return content


REQUIRED_INFO = ("configuration", "model", "dataset_name", "raw_folder", "preprocessed_folder", "file_ending", "labels")


class ModelFolder:
    def __init__(self, path: Path, info: ModelInfo):
        self.path, self.info = Path(path), info

    # ----------------------------------------------------------------------------- read / write
    @classmethod
    def open(cls, path: Path) -> "ModelFolder":
        path = Path(path)
        if not path.is_dir():
            raise MedsegError(f"{path}: no such model folder")
        info_path = path / "model.json"
        if not info_path.is_file():  # other kinds of folder: medseg.model_folders.open_model_folder
            raise MedsegError(f"{path}: not a medseg model folder (no model.json)")
        try:
            content = json.loads(info_path.read_text())
        except (OSError, ValueError) as error:
            raise MedsegError(f"{info_path}: unreadable ({error})") from None
        return cls(path, ModelInfo.from_dict(content, info_path))

    @classmethod
    def create(cls, path: Path, plans: Plans, dataset_json: Path, info: ModelInfo) -> "ModelFolder":
        """Write plans.json, dataset.json and model.json (atomically), so the folder describes itself."""
        from medseg import __version__

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        plans.save(path / "plans.json")
        shutil.copyfile(dataset_json, path / "dataset.json")
        info.medseg_version = __version__
        write_json_atomic(path / "model.json", asdict(info))
        return cls(path, info)

    @cached_property
    def plans(self) -> Plans:
        return Plans.load(self.path / "plans.json")

    @property
    def configuration(self) -> ConfigurationPlan:
        return self.plans.configuration(self.info.configuration)

    @property
    def raw_folder(self) -> Path:
        return Path(self.info.raw_folder)

    @property
    def preprocessed_folder(self) -> Path:
        return Path(self.info.preprocessed_folder)

    @property
    def reference_labels(self) -> Path:
        """The raw dataset's training labels, which cross-validation scores against."""
        return self.raw_folder / "labelsTr"

    # ------------------------------------------------------------------------------------ folds
    def fold_folder(self, fold: str) -> Path:
        return self.path / f"fold_{fold}"

    def folds(self) -> list[str]:
        return sorted(p.name.removeprefix("fold_") for p in self.path.glob("fold_*") if p.is_dir())

    def fold_finished(self, fold: str) -> bool:
        folder = self.fold_folder(fold)
        return (folder / "checkpoint_final.pt").is_file() and (folder / "validation" / "summary.json").is_file()

    def checkpoint_path(self, fold: str, checkpoint: str = "auto") -> Path:
        """``auto``: final, else best."""
        if checkpoint != "auto" and checkpoint not in CHECKPOINTS:
            raise MedsegError(f"unknown checkpoint '{checkpoint}' (choose auto, {', '.join(CHECKPOINTS)})")
        folder = self.fold_folder(fold)
        names = ["checkpoint_final.pt", "checkpoint_best.pt"] if checkpoint == "auto" else [f"checkpoint_{checkpoint}.pt"]
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise MedsegError(f"{folder}: no {' or '.join(names)} (has this fold finished training?)")

    def load_module_states(self, fold: str, checkpoint: str = "auto") -> dict[str, dict]:
        """The trained modules' state dicts of a fold, by module name ("network", ...)."""
        from medseg.model_card import verify_weights
        from medseg.training.checkpoint import load_checkpoint, module_states

        path = self.checkpoint_path(fold, checkpoint)
        verify_weights(path)  # against the card's sha256, when the folder has a card listing it
        return module_states(load_checkpoint(path), path)

    def input_profile(self) -> dict | None:
        """What its training images looked like (medseg.audit.input_profile); None when unknown."""
        from medseg.audit.input_profile import read_profile

        return read_profile(self.path)

    def calibration(self) -> dict | None:
        """What cross-validation fitted for auditing its predictions: a segmentation model's expected
        Dice per structure (medseg.audit.calibration), a classifier's probability temperature
        (medseg.audit.probability_calibration, ``"kind": "temperature"``)."""
        from medseg.audit.calibration import read_calibration
        from medseg.audit.probability_calibration import read_probability_calibration

        return read_calibration(self.path) or read_probability_calibration(self.path)

    # ---------------------------------------------------------------------- cross-validation results
    def scoring(self) -> dict:
        """How its predictions are scored (medseg.evaluation.report.evaluate_folder): regions instead
        of labels for a region-based model, and the reference's ignore label."""
        return {"regions": self.plans.regions, "ignore_label": self.plans.ignore_label}

    def postprocessing(self) -> dict:
        path = self.path / "postprocessing.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MedsegError(f"{path}: unreadable ({error})") from None

    def write_postprocessing(self, decision: dict) -> None:
        write_json_atomic(self.path / "postprocessing.json", decision)

    def crossval_summary_path(self) -> Path:
        return self.path / "crossval_summary.json"


def model_summary(name: str, folder: ModelFolder) -> dict:
    """What a client needs to pick and show a model (``medseg serve``'s GET /models, ``medseg describe``):
    family, labels and their display colours (those of the DICOM SEG, RTSTRUCT and overlays), inputs."""
    import medseg
    from medseg.io.colours import label_colour
    from medseg.model_card import read_card

    info = folder.info
    return {
        "name": name, "family": info.model, "task": info.task, "configuration": info.configuration,
        "labels": info.labels,
        "colours": {label: "#%02x%02x%02x" % tuple(label_colour(value)) for label, value in info.labels.items() if value > 0},
        "input_channels": folder.plans.channel_names, "file_ending": info.file_ending,
        "version": info.medseg_version or medseg.__version__, "folds": folder.folds(),
        "card": read_card(folder.path),
        "calibration": folder.calibration(),  # expected Dice and review thresholds, with their cross-validated quality
    }
