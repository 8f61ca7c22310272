"""A MONAI bundle (``configs/inference.json`` or ``.yaml``, ``configs/metadata.json``,
``models/model.pt``) read as a medseg ``ModelFolder``, so `-m BUNDLE` gives a MONAI Model Zoo
segmentation model every medseg output: DICOM SEG / RTSTRUCT, the manifest, the REST server, the
DICOM node. The bundle's own network, pre- and post-processing run through ``monai.bundle``
(medseg.tasks.segmentation.inference.bundle_predictor); here only what medseg needs to know about
it: its labels (metadata's ``channel_def`` of the ``pred`` output), its input channels, its name
and version. A bundle's configuration runs Python expressions (``$...``), as ``monai.bundle run``
does: run bundles you trust, as you would run their code."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder, ModelInfo, check_info_values, read_json_object
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.torch_files import load_plain

CONFIGS = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
METADATA = "configs/metadata.json"
WEIGHTS = "models/model.pt"
BUNDLE_FOLD = "bundle"  # a bundle is one trained network: one "fold" as far as manifests go


def bundle_config(path: Path) -> Path | None:
    return next((Path(path) / name for name in CONFIGS if (Path(path) / name).is_file()), None)


def is_monai_bundle(path: Path) -> bool:
    """An inference configuration and a metadata file in ``configs/``, and no medseg model.json."""
    path = Path(path)
    return not (path / "model.json").is_file() and bundle_config(path) is not None and (path / METADATA).is_file()


def _labels(metadata: dict, source: Path) -> dict[str, int]:
    """The ``pred`` output's channel_def ({"0": "background", "1": "spleen"}) as medseg labels."""
    outputs = (metadata.get("network_data_format") or {}).get("outputs") or {}
    output = outputs.get("pred") or (next(iter(outputs.values())) if len(outputs) == 1 else None)
    channel_def = (output or {}).get("channel_def")
    if not isinstance(channel_def, dict) or not channel_def:
        raise MedsegError(f"{source}: network_data_format.outputs.pred.channel_def is missing; medseg needs the bundle's label names to write its outputs")
    labels = {}
    for value, name in channel_def.items():
        if not re.fullmatch(r"\d+", str(value)) or not isinstance(name, str):
            raise MedsegError(f"{source}: channel_def entry {value!r}: {name!r}: expected a label value and its name")
        labels[name.strip() or f"label {value}"] = int(value)
    if 0 not in labels.values():
        labels = {"background": 0, **labels}
    return labels


def _input_channels(metadata: dict) -> list[str]:
    inputs = (metadata.get("network_data_format") or {}).get("inputs") or {}
    image = inputs.get("image") or (next(iter(inputs.values())) if len(inputs) == 1 else {}) or {}
    count = image.get("num_channels", 1)
    names = image.get("channel_def") if isinstance(image.get("channel_def"), dict) else {}
    return [str(names.get(str(i), f"channel {i}")) for i in range(int(count) if isinstance(count, int) and count > 0 else 1)]


class MonaiBundleFolder(ModelFolder):
    """Read-only: a bundle keeps its own weights and configuration; medseg writes nothing into it."""

    @classmethod
    def open(cls, path: Path) -> "MonaiBundleFolder":
        path = Path(path)
        metadata = read_json_object(path / METADATA)
        source = path / METADATA
        labels = _labels(metadata, source)
        name = str(metadata.get("name") or path.resolve().name)
        version = str(metadata.get("version", ""))
        info = ModelInfo(
            configuration=BUNDLE_FOLD, model="monai_bundle", dataset_name=f"{name} {version}".strip(), raw_folder="", preprocessed_folder="",
            file_ending=".nii.gz", labels=labels,
            extra={"source": "monai_bundle", "bundle_name": name, "bundle_version": version, "license": str(metadata.get("license", ""))},
        )
        check_info_values(info, source)
        folder = cls(path, info)
        folder.__dict__["plans"] = _plans(name, labels, _input_channels(metadata))  # what check_input and describe read
        return folder

    @property
    def config_file(self) -> Path:
        config = bundle_config(self.path)
        if config is None:
            raise MedsegError(f"{self.path}: no configs/inference.json")
        return config

    def folds(self) -> list[str]:
        return [BUNDLE_FOLD]

    def fold_finished(self, fold: str) -> bool:
        return fold == BUNDLE_FOLD and (self.path / WEIGHTS).is_file()

    def checkpoint_path(self, fold: str, checkpoint: str = "auto") -> Path:
        weights = self.path / WEIGHTS
        if not weights.is_file():
            shown = " (it has models/model.ts: TorchScript bundles are not run by medseg)" if (self.path / "models" / "model.ts").is_file() else ""
            raise MedsegError(f"{self.path}: no {WEIGHTS}{shown}")
        return weights

    def load_module_states(self, fold: str, checkpoint: str = "auto") -> dict[str, dict]:
        """The network's state dict from models/model.pt (a state dict, or one under "model"), read without running code."""
        import torch

        path = self.checkpoint_path(fold, checkpoint)
        content = load_plain(path, "state dict")
        states = content.get("model", content) if isinstance(content, dict) else None
        if not isinstance(states, dict) or not all(isinstance(v, torch.Tensor) for v in states.values()):
            raise MedsegError(f"{path}: expected a state dict (parameter name -> tensor), or one under 'model'")
        return {"network": states}

    def postprocessing(self) -> dict:
        return {}

    def write_postprocessing(self, decision: dict) -> None:
        raise MedsegError(f"{self.path}: MONAI bundles are read-only to medseg")

    def input_profile(self) -> dict | None:
        return None  # a bundle says nothing medseg can check inputs against

    def calibration(self) -> dict | None:
        return None


def _plans(name: str, labels: dict[str, int], channels: list[str]) -> Plans:
    """What medseg's surfaces read of a model's plans, for a bundle whose own config does the rest."""
    configuration = ConfigurationPlan(
        name=BUNDLE_FOLD, ndim=3, spacing=[], median_shape=[], patch_size=[], batch_size=1, batch_dice=False,
        normalization=[{"scheme": "monai_bundle", "use_mask": False, "properties": {}} for _ in channels],
        architecture={"name": "monai_bundle", "kwargs": {}}, resampling={}, data_identifier="",
    )
    return Plans(
        dataset_name=name, plans_name="monai_bundle", planner={"mode": "monai_bundle"}, transpose_forward=[0, 1, 2], transpose_backward=[0, 1, 2],
        original_median_spacing=[], original_median_shape=[], labels=dict(labels), channel_names=channels,
        foreground_intensity_properties_per_channel={}, configurations={BUNDLE_FOLD: configuration},
    )
