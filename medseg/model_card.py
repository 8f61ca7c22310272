"""A model's card (``card.json`` beside ``model.json``): what the model is, what it may be used
for, what it was trained on, how well it cross-validated, which medseg made it, and a sha256 of
each weight file, which every load checks.

``plan-and-train`` writes the card from what it knows (the dataset's dataset.json, the
cross-validation report, the checkpoints); ``medseg card MODEL_FOLDER --set key=value`` fills the
rest (licence, intended use, limits...); re-writing keeps what a person set. A card is optional
(folders trained before cards, nnU-Net folders): without one nothing is checked."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

CARD_FILE = "card.json"
CARD_VERSION = 1
NOT_STATED = "not stated"
# what ``medseg card --set`` may change; the rest is measured (cross-validation, checksums, medseg)
EDITABLE = {
    "name": "the model's name (default: its folder's)",
    "version": "the model's own version",
    "licence": "the licence of the weights",
    "intended_use": "what the model is meant for",
    "limits": "known limits: populations, scanners, structures it was not trained on",
    "authors": "who trained it",
    "training_data.dataset": "the training dataset's name",
    "training_data.cases": "how many training cases (an integer)",
    "training_data.source": "where the training data came from",
    "training_data.licence": "the training data's licence",
}
WEIGHT_PATTERNS = ("fold_*/checkpoint_final.pt", "fold_*/checkpoint_best.pt")
MAX_TEXT = 2000


def card_path(folder: Path) -> Path:
    return Path(folder) / CARD_FILE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weight_checksums(folder: Path) -> dict[str, str]:
    """sha256 of each fold's final and best checkpoint, by path relative to the model folder."""
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in files}


def source_commit() -> str:
    """The git commit medseg runs from, when it runs from a checkout (else "unknown")."""
    package = Path(__file__).resolve().parent
    try:
        result = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and len(commit) == 40 else "unknown"


def read_card(folder: Path) -> dict | None:
    """The folder's card, None when it has none; a malformed card is refused naming the file."""
    path = card_path(folder)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{path}: unreadable ({error})") from None
    if not isinstance(card, dict) or card.get("version_of_card", CARD_VERSION) != CARD_VERSION:
        raise MedsegError(f"{path}: not a medseg model card (version {CARD_VERSION} expected)")
    weights = card.get("weights", {})
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in weights.items()):
        raise MedsegError(f"{path}: weights: expected file names mapped to sha256 hex digests")
    return card


def _cross_validation(folder: Path) -> dict:
    summary = Path(folder) / "crossval_summary.json"
    if not summary.is_file():
        return {}
    try:
        report = json.loads(summary.read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{summary}: unreadable ({error})") from None
    kept = {key: report[key] for key in ("folds", "num_cases", "foreground_mean", "mean", "postprocessed") if key in report}
    scalars = {key: value for key, value in report.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {**scalars, **kept, "report": summary.name}


def _training_data(folder: Path, dataset_name: str, dataset: dict | None) -> dict:
    if dataset is None:
        path = Path(folder) / "dataset.json"
        try:
            dataset = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, ValueError):
            dataset = {}
    source = dataset.get("reference") or dataset.get("converted_from") or dataset.get("description") or NOT_STATED
    return {
        "dataset": str(dataset.get("name", dataset_name)), "cases": dataset.get("numTraining", NOT_STATED),
        "source": str(source), "licence": str(dataset.get("licence", dataset.get("license", NOT_STATED))),
    }


def write_card(model_folder, updates: dict[str, str] | None = None, dataset: dict | None = None) -> dict:
    """Write (or refresh) ``card.json`` of a medseg model folder: measured fields from the folder,
    fields a person set kept, ``updates`` (``EDITABLE`` keys, dotted for training_data) applied.
    ``dataset``: the raw dataset.json already parsed (else the folder's copy is read)."""
    import medseg

    folder = Path(model_folder.path)
    previous = read_card(folder) or {}
    info = model_folder.info
    training_data = {**_training_data(folder, info.dataset_name, dataset), **previous.get("training_data", {})}
    card = {
        "name": previous.get("name", folder.name),
        "version": previous.get("version", "1"),
        "task": info.task,
        "model": info.model,
        "configuration": info.configuration,
        "labels": info.labels,
        "licence": previous.get("licence", NOT_STATED),
        "intended_use": previous.get("intended_use", NOT_STATED),
        "limits": previous.get("limits", NOT_STATED),
        "authors": previous.get("authors", NOT_STATED),
        "training_data": training_data,
        "cross_validation": _cross_validation(folder),
        "medseg": {"version": medseg.__version__, "commit": source_commit()},
        "weights": weight_checksums(folder),
        "version_of_card": CARD_VERSION,
    }
    for key, value in (updates or {}).items():
        _apply(card, key, value, folder)
    write_json_atomic(card_path(folder), card)
    return card


def _apply(card: dict, key: str, value: str, folder: Path) -> None:
    if key not in EDITABLE:
        raise MedsegError(f"{card_path(folder)}: '{key}' cannot be set (settable: {', '.join(EDITABLE)})")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
        raise MedsegError(f"{card_path(folder)}: {key}: expected 1 to {MAX_TEXT} characters")
    if key == "training_data.cases":
        if not value.strip().isdigit():
            raise MedsegError(f"{card_path(folder)}: training_data.cases = {value!r}: expected a whole number")
        value = int(value)
    if "." in key:
        section, field = key.split(".", 1)
        card[section][field] = value
    else:
        card[key] = value


def parse_settings(settings: list[str]) -> dict[str, str]:
    """``key=value`` strings (``--set``) -> {key: value}; a setting without '=' is refused by name."""
    updates = {}
    for setting in settings:
        key, separator, value = setting.partition("=")
        if not separator:
            raise MedsegError(f"--set {setting!r}: expected key=value (keys: {', '.join(EDITABLE)})")
        updates[key.strip()] = value.strip()
    return updates


def verify_weights(checkpoint: Path) -> None:
    """Refuse a weight file whose sha256 differs from its model folder's card (naming the file; a
    damaged one as unreadable, a readable one as changed);
    files the card does not list, and folders without a card, pass."""
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent.parent
    card = read_card(folder)
    if not card:
        return
    relative = checkpoint.relative_to(folder).as_posix()
    expected = card.get("weights", {}).get(relative)
    if expected is None:
        return
    actual = sha256_of(checkpoint)
    if actual != expected:
        from medseg.training.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)  # a damaged file is named as unreadable first (weights only: no code runs)
        raise MedsegError(
            f"{checkpoint}: sha256 {actual[:16]}... differs from {card_path(folder)} ({expected[:16]}...): "
            "the weights were changed or damaged after the card was written"
        )


def record_weights(checkpoint: Path) -> None:
    """The trainer wrote ``checkpoint`` anew (a fold retrained or resumed): its card, if the model
    folder has one, takes the new sha256, so only changes made outside medseg are refused."""
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent.parent
    card = read_card(folder)
    if card is None:
        return
    card.setdefault("weights", {})[checkpoint.relative_to(folder).as_posix()] = sha256_of(checkpoint)
    write_json_atomic(card_path(folder), card)
