"""medseg_plans: preset plans shipped with medseg, one JSON file per preset beside this module.

A preset is a named set of planner settings for a task (and optionally only some model families),
applied on top of the self-configuring planner: ``medseg plans`` lists them, ``medseg plan
--preset NAME`` and ``medseg plan-and-train --preset NAME`` use them. File layout:

    {"name": "fast", "summary": "...", "task": "segmentation", "models": null,
     "settings": {"min_spacing_mm": 3.0}}

Settings the segmentation planner understands: ``mode`` ("time" or "memory": size for a CPU's
step time or for GPU memory, on any machine), ``memory_gb``, ``step_seconds``, ``base_features``
(width of the first stage), ``min_spacing_mm`` (no target spacing finer than this), and for
memory plans ``reference_activations`` ({"2": N, "3": N}: activations per sample that fit
``reference_gb`` at nnU-Net's reference batch; default: the family's own) and
``max_dataset_fraction`` (a batch covers at most this share of the dataset's voxels; default
0.05). The 2D autoencoder tasks (GMS, autoencoder pretraining) understand ``input_size`` (the square
side images are resized to). A preset naming one model family plans that family when no model is given. A plug-in adds
presets with ``register_preset``."""

if __name__ != "medseg_plans":  # imported as the repository folder
    raise ImportError(f"medseg's preset plans are imported as `medseg_plans`, not `{__name__}`: use `import medseg_plans`")

import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from medseg.errors import MedsegError  # noqa: E402
from medseg.registry import Registry  # noqa: E402

PRESET_DIR = Path(__file__).resolve().parent
SETTINGS = {
    "mode": str, "memory_gb": float, "step_seconds": float, "base_features": int, "min_spacing_mm": float,
    "reference_activations": dict, "reference_gb": float, "max_dataset_fraction": float, "input_size": int,
}


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    task: str
    models: tuple[str, ...] | None  # None: every family of the task
    settings: dict

    def settings_for(self, task: str, model: str) -> dict:
        """The settings, after checking that the preset is meant for this task and family."""
        if task != self.task:
            raise MedsegError(f"preset '{self.name}' is for the {self.task} task, not {task}")
        if self.models is not None and model not in self.models:
            raise MedsegError(f"preset '{self.name}' is for {', '.join(self.models)}, not {model}")
        return {"preset": self.name, **self.settings}


def _parse(path: Path) -> Preset:
    try:
        content = json.loads(path.read_text())
        preset = Preset(content["name"], content["summary"], content["task"], tuple(content["models"]) if content.get("models") else None, dict(content["settings"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MedsegError(f"{path}: malformed preset ({type(error).__name__}: {error})") from None
    for key, value in preset.settings.items():
        if key not in SETTINGS or not isinstance(value, (SETTINGS[key], int) if SETTINGS[key] is float else SETTINGS[key]):
            raise MedsegError(f"{path}: unknown or mistyped setting {key!r}={value!r} (known: {', '.join(SETTINGS)})")
    references = preset.settings.get("reference_activations", {"2": 1, "3": 1})
    if set(references) - {"2", "3"} or not all(isinstance(v, (int, float)) and v > 0 for v in references.values()):
        raise MedsegError(f"{path}: reference_activations must map '2' and/or '3' to positive counts, got {references!r}")
    if preset.settings.get("mode", "time") not in ("time", "memory"):
        raise MedsegError(f"{path}: mode must be 'time' or 'memory', got {preset.settings['mode']!r}")
    return preset


_shipped: list[Preset] = []


def _load_shipped() -> None:
    if not _shipped:
        _shipped.extend(register_preset(_parse(path)) for path in sorted(PRESET_DIR.glob("*.json")))


PRESETS: Registry[Preset] = Registry("preset", loader=_load_shipped)


def register_preset(preset: Preset) -> Preset:
    return PRESETS.register(preset.name, preset)


def get_preset(name: str) -> Preset:
    return PRESETS.get(name)


def list_presets() -> list[Preset]:
    return sorted(PRESETS.values(), key=lambda preset: preset.name)
