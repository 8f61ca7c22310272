"""``--runtime auto``: the fastest installed runtime whose labels equal PyTorch float32's on the
model's own validation case, measured once per model, machine and versions and remembered.

The candidates are PyTorch (at the chosen precision) and, on a CPU where the task runs compiled and
the openvino package is installed, OpenVINO (same precision hint). Each predicts the case once to
warm up and to be compared with PyTorch float32 (every label's Dice >= ``MIN_DICE``), then once
more, timed; the fastest that passes wins, PyTorch float32 when none does. The case is the first
held-out case of the first fold whose raw image is at hand (the model's dataset), else a synthetic
image of one and a half patches (said so in the record). The decision is kept in
``$XDG_CACHE_HOME/medseg/runtime_choice/<key>.json``; the key covers the checkpoints' sha256, the
folds, the precision, the device, the CPU and the torch, OpenVINO and medseg versions."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError

MIN_DICE = 0.999


def cache_folder() -> Path:
    from medseg.inference.openvino_runtime import cache_root  # the user's medseg cache, beside OpenVINO's conversions

    return cache_root().parent / "runtime_choice"


def candidates(compiles: bool, options) -> list[str]:
    """``compiles``: the model's task runs compiled by OpenVINO (its capability)."""
    names = ["torch"]
    on_cpu = str(options.device).startswith("cpu") if options.device else not _cuda()
    if on_cpu and compiles and importlib.util.find_spec("openvino") is not None:
        names.append("openvino")
    return names


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def choice_key(folder, options, names: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    import medseg
    from medseg.model_card import sha256_of

    try:
        folds = list(options.folds) if options.folds else folder.folds()
        weights = [sha256_of(folder.checkpoint_path(fold, options.checkpoint)) for fold in folds]
    except (AttributeError, MedsegError):  # an ensemble or another reader's folder: every weights file in it
        folds, weights = options.folds, sorted(sha256_of(p) for p in Path(folder.path).rglob("*.pt*") if p.is_file())
    try:
        openvino_version = version("openvino")
    except PackageNotFoundError:
        openvino_version = None
    machine = [platform.machine(), torch.backends.cpu.get_cpu_capability(), os.cpu_count(), torch.get_num_threads()]
    parts = [weights, folds, options.precision, options.device, names, machine, torch.__version__, openvino_version, medseg.__version__]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def validation_case(folder):
    """(case id, MedicalImage): the first held-out case of the first fold whose raw image is at hand;
    None when the model's dataset is not here."""
    from medseg.data.cases import load_case_images
    from medseg.data.layout import list_cases, load_dataset_description

    raw = getattr(folder, "raw_folder", None)
    if raw is None or not Path(raw).is_dir():
        return None
    try:
        cases = {case.case_id: case for case in list_cases(load_dataset_description(raw), "Tr")[0]}
        ending, folds = folder.info.file_ending, folder.folds()
        for fold in folds:
            for path in sorted((folder.fold_folder(fold) / "validation").glob(f"*{ending}")):
                case = cases.get(path.name[: -len(ending)])
                if case is not None:
                    return case.case_id, load_case_images(case)
    except (AttributeError, MedsegError, OSError):
        return None
    return None


def synthetic_case(folder):
    """A random image of one and a half patches at the plan's spacing (for the equality check only)."""
    from medseg.io import MedicalImage

    configuration = folder.configuration
    shape = [int(np.ceil(1.5 * side)) for side in configuration.patch_size]
    channels = len(folder.plans.channel_names)  # the image's own channels (a cascade adds its first stage's labels itself)
    array = np.random.default_rng(0).normal(size=(channels, *shape)).astype(np.float32)
    spacing = tuple(float(s) for s in configuration.spacing)
    return "synthetic", MedicalImage(array, spacing, (0.0,) * len(shape), np.eye(len(shape)))


def dice_per_label(ours: np.ndarray, reference: np.ndarray) -> dict[int, float]:
    scores = {}
    for label in sorted((set(np.unique(reference).tolist()) | set(np.unique(ours).tolist())) - {0}):
        a, b = ours == label, reference == label
        scores[int(label)] = float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))
    return scores


def measure(folder, options, open_local, names: list[str]) -> dict:
    """Predict the case with every candidate; -> the record (chosen runtime, seconds, Dice)."""
    found = validation_case(folder)
    try:
        case_id, image = found if found is not None else synthetic_case(folder)
    except AttributeError:  # no single plan to make an image from (an ensemble without its dataset)
        return {"runtime": "torch", "float32_fallback": False, "case": None, "why": "no validation case at hand and no single plan to make one"}
    reference = open_local(folder, replace(options, runtime="torch", precision="float32")).predict_image(image, case_id=case_id).segmentation.array
    tried = {}
    for name in names:
        try:
            predictor = open_local(folder, replace(options, runtime=name))
            labels = predictor.predict_image(image, case_id=case_id).segmentation.array
            started = time.perf_counter()
            predictor.predict_image(image, case_id=case_id)
            seconds = time.perf_counter() - started
        except MedsegError as error:  # e.g. OpenVINO cannot convert this family: the others remain
            tried[name] = {"error": str(error)}
            continue
        dice = dice_per_label(labels, reference)
        tried[name] = {"seconds": round(seconds, 4), "precision": getattr(predictor, "precision", None), "dice": dice, "passes": min(dice.values(), default=1.0) >= MIN_DICE}
    passing = [name for name in names if tried[name].get("passes")]
    chosen = min(passing, key=lambda name: tried[name]["seconds"]) if passing else "torch"
    return {"runtime": chosen, "float32_fallback": not passing, "case": case_id, "tried": tried, "min_dice": MIN_DICE}


def choose_runtime(folder, compiles: bool, options, open_local) -> tuple[str, str | None, dict]:
    """-> (runtime, precision override or None, record). ``compiles``: the task runs compiled
    (OpenVINO); ``open_local(folder, options)`` opens a local predictor for given options (the
    front door's own path)."""
    names = candidates(compiles, options)
    if names == ["torch"]:
        return "torch", None, {"runtime": "torch", "why": "the only runtime installed for this model and device"}
    path = cache_folder() / f"{choice_key(folder, options, names)}.json"
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            return record["runtime"], ("float32" if record.get("float32_fallback") else None), {**record, "cached": str(path)}
        except (OSError, ValueError, KeyError):
            pass  # measured again below and rewritten
    record = measure(folder, options, open_local, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    return record["runtime"], ("float32" if record["float32_fallback"] else None), {**record, "measured": str(path)}
