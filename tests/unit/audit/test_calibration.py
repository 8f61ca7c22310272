"""The expected Dice's parts: confidence features from probabilities, the isotonic calibration and
its review threshold (pure functions; the end-to-end flag is tested in tests/e2e/test_audit.py)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.audit.calibration import apply_map, expected_dice, fit_calibration, isotonic_fit
from medseg.audit.confidence import label_channels, structure_confidence


def test_isotonic_fit_pools_violators():
    xs, ys = isotonic_fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert xs == pytest.approx([0.1, 0.25, 0.4]) and ys == pytest.approx([1.0, 2.5, 4.0])
    assert apply_map(xs, ys, 0.0) == 1.0 and apply_map(xs, ys, 0.325) == pytest.approx(3.25) and apply_map(xs, ys, 9) == 4.0


def _softmax_case(sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """A disc of label 1 whose probability falls off with distance from its edge (higher sharpness: surer)."""
    yy, xx = np.mgrid[:40, :40]
    distance = np.hypot(yy - 20, xx - 20) - 10
    foreground = 1 / (1 + np.exp(sharpness * distance))
    probabilities = np.stack([1 - foreground, foreground]).astype(np.float32)
    return probabilities, probabilities.argmax(axis=0)


def test_a_sharp_structure_is_surer_than_a_fuzzy_one():
    channels = label_channels({"background": 0, "disc": 1, "absent": 2})
    assert channels == {"disc": (1, 1), "absent": (2, 2)}
    sharp_p, sharp_labels = _softmax_case(5.0)
    fuzzy_p, fuzzy_labels = _softmax_case(0.3)
    padded = {name: channel for name, channel in channels.items() if channel[1] < 2}
    sharp = structure_confidence(sharp_p, sharp_labels, padded)["disc"]
    fuzzy = structure_confidence(fuzzy_p, fuzzy_labels, padded)["disc"]
    assert sharp["soft_dice"] > 0.95 and fuzzy["soft_dice"] < 0.7
    assert sharp["entropy"] < fuzzy["entropy"] and sharp["max_softmax"] > fuzzy["max_softmax"]
    assert sharp["voxels"] == int((sharp_labels == 1).sum())
    # a label the model gives no probability and the map does not hold: certain it is absent
    three = np.concatenate([sharp_p, np.zeros((1, 40, 40), np.float32)])
    assert structure_confidence(three, sharp_labels, channels)["absent"]["soft_dice"] == 1.0


def test_region_channels_follow_the_regions_order():
    labels = {"background": 0, "whole": 1, "core": 2}
    assert label_channels(labels, ["whole", "core"]) == {"whole": (1, 0), "core": (2, 1)}
    probabilities = np.zeros((2, 10, 10), np.float32)
    probabilities[0, 2:8, 2:8] = 0.9
    probabilities[1, 4:6, 4:6] = 0.6
    label_map = np.zeros((10, 10), np.uint8)
    label_map[2:8, 2:8] = 1
    label_map[4:6, 4:6] = 2
    result = structure_confidence(probabilities, label_map, label_channels(labels, ["whole", "core"]), regions=True)
    assert result["core"]["mean_probability"] == pytest.approx(0.6) and result["whole"]["voxels"] == 36  # the whole region includes the core


def test_calibration_maps_soft_dice_to_dice_and_flags_the_poor_cases():
    rng = np.random.default_rng(0)
    soft = rng.uniform(0.5, 1.0, 200)
    dice = np.clip(soft - 0.1 + rng.normal(0, 0.02, 200), 0, 1)  # the soft Dice is optimistic by 0.1
    rows = [{"label": "organ", "soft_dice": s, "max_softmax": 0.9, "dice": d} for s, d in zip(soft, dice)]
    calibration = fit_calibration(rows, ndim=3, feature="soft_dice")
    organ = calibration["labels"]["organ"]
    assert organ["fitted"] and organ["cases"] == 200 and organ["poor_cases"] == int((dice < 0.85).sum())
    assert calibration["quality"]["organ"]["mean_absolute_error"] < 0.03
    assert calibration["quality"]["organ"]["auroc"] > 0.95 and calibration["quality"]["organ"]["baseline_auroc"] == 0.5
    assert 0.8 < organ["threshold"] < 0.9
    low, high = expected_dice(calibration, {"organ": {"soft_dice": 0.8}}), expected_dice(calibration, {"organ": {"soft_dice": 1.0}})
    assert low["organ"]["review"] and not high["organ"]["review"]
    assert low["organ"]["expected_dice"] == pytest.approx(0.7, abs=0.03)
