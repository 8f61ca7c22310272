"""The classification task's plan: the shared 2D image sizing, plus classes, loss and optimizer
settings, radiograph or colour augmentation, and gradient routing for gated (HAG) families."""

from __future__ import annotations


import numpy as np
import torch

from medseg.tasks.image_plans import image_plans, measure_forward_seconds, size_image_plan
from medseg.tasks.classification.run import WARMUP_FRACTION, labels_table
from medseg.tasks.registry import PlanRequest


def plan(fingerprint_file, description, request: PlanRequest):
    from medseg.training.image_augmentation import augmentation_preset

    table = labels_table(description)
    sized = size_image_plan(fingerprint_file, description, request)
    classes = list(description.classes)
    positives = np.zeros(len(classes))
    for target in table.targets.values():
        positives += np.asarray(target) if description.multi_label else np.eye(len(classes))[target]
    width = sized["architecture"]["kwargs"].get("width", 192)
    training = {
        "optimizer": "adamw", "learning_rate": 1e-3 if width <= 192 else 5e-4, "weight_decay": 0.05,
        "warmup_fraction": WARMUP_FRACTION, "layer_decay": 1.0, "pretrained_layer_decay": 0.75, "multi_label": description.multi_label,
        "loss": "bce" if description.multi_label else "ce", "class_weights": None,
        "class_counts": {name: int(count) for name, count in zip(classes, positives)},
    }
    if has_gates(sized["architecture"], description.num_channels, len(classes)):
        # HAG: the gates get their own optimizer and forward pass; as published, the first pass's
        # gradients also reach the main step (set false to keep the two passes apart)
        training.update(gradient_routing=True, gate_gradients_reach_main=True)
    labels = {name: index for index, name in enumerate(classes)}
    augmentation = augmentation_preset(description.num_channels)
    if sized["planner"]["mode"] == "time":
        sized["planner"]["validation_seconds"] = round(validation_seconds(sized, description.num_channels, len(classes), augmentation), 3)
    return image_plans(sized, description, request, labels, augmentation, training)


def validation_seconds(sized: dict, channels: int, num_classes: int, augmentation: dict) -> float:
    """One fold's final validation, measured ahead: its share of the training images through every
    test-time view. A total budget takes it off each run's training from the first fold on (the
    later folds otherwise pay for the first one's validation)."""
    from medseg.tasks.classification.test_time import view_transforms
    from medseg.training.splits import NUM_FOLDS

    batch = sized["batch"]
    per_image = measure_forward_seconds(sized["architecture"], channels, max(num_classes, 1), batch) / batch
    cases = len(sized["fingerprint"].case_ids) / NUM_FOLDS
    return cases * len(view_transforms(augmentation)) * per_image


def has_gates(architecture: dict, in_channels: int, num_classes: int) -> bool:
    from medseg.models.registry import build_model
    from medseg.models.vit import is_gate_parameter

    with torch.device("meta"):
        network = build_model(architecture, in_channels, num_classes)
    return any(is_gate_parameter(name) for name, _ in network.named_parameters())
