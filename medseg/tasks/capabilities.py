"""What a task's models can do, declared by the task (``Task.capabilities``) and asked for by the
surfaces (the CLI, the REST server, the DICOM node, compare, export): a surface never tests a
task's name."""

from __future__ import annotations

from collections.abc import Iterable

LABEL_MAPS = "label_maps"
CLASS_SCORES = "class_scores"
CROSSVAL = "crossval"
ONNX = "onnx"
OPENVINO = "openvino"
RAY = "ray"
PRETRAINS = "pretrains"
PATCH_PLANNING = "patch_planning"
LATENT_SPACE = "latent_space"

CAPABILITIES = {  # as "does not ..." reads it
    LABEL_MAPS: "produce label maps (NIfTI, PNG, DICOM SEG, RTSTRUCT, overlays)",
    CLASS_SCORES: "produce class probabilities (predictions.csv)",
    CROSSVAL: "report cross-validation",
    ONNX: "export to ONNX (--runtime onnx)",
    OPENVINO: "run compiled by OpenVINO (--runtime openvino)",
    RAY: "run cases on a Ray cluster (--backend ray)",
    PRETRAINS: "pretrain on every image (fold 'all') for another task's model",
    PATCH_PLANNING: "size each family's network from the planned patch (families without a planner run from presets)",
    LATENT_SPACE: "segment in a frozen autoencoder's latent space (--autoencoder)",
}


def capability_list(names: Iterable[str], joined_by: str = ", ") -> str:
    return joined_by.join(CAPABILITIES.get(name, name) for name in sorted(names)) or "nothing a surface asks for"
