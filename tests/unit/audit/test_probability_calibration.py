"""A classifier's temperature scaling, its calibration error, patient-level aggregation and the
test-time views, on numbers whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.audit.probability_calibration import (
    calibrated, expected_calibration_error, fit_temperature, held_out_quality, logits_of, negative_log_likelihood,
)
from medseg.tasks.classification.patients import patient_level
from medseg.tasks.classification.test_time import apply_view, view_transforms
from medseg.training.image_augmentation import PHOTOGRAPH, RADIOGRAPH


def _overconfident(n: int, seed: int, temperature: float):
    """Binary softmax outputs whose true temperature is known: labels drawn from softmax(z), the
    network reports softmax(z * temperature)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    logits = np.stack([np.zeros(n), z * temperature], axis=1)
    reported = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return reported, np.eye(2)[labels]


def test_the_fitted_temperature_recovers_the_overconfidence_and_lowers_nll_and_ece():
    reported, onehot = _overconfident(4000, 0, 3.0)
    temperature = fit_temperature(reported, onehot, multi_label=False)
    assert temperature == pytest.approx(3.0, rel=0.12)
    fixed = calibrated(reported, temperature, multi_label=False)
    assert negative_log_likelihood(fixed, onehot, False) < negative_log_likelihood(reported, onehot, False) - 0.05
    assert expected_calibration_error(fixed, onehot, False) < 0.5 * expected_calibration_error(reported, onehot, False)
    assert (fixed.argmax(1) == reported.argmax(1)).all()  # the ranking, and so the AUC, does not move


def test_multi_label_gets_one_temperature_per_class_and_logits_round_trip():
    reported, onehot = _overconfident(3000, 1, 2.0)
    sharp, sharp_targets = reported[:, 1:], onehot[:, 1:]
    calm_targets = (np.random.default_rng(2).random((3000, 1)) < 0.3).astype(float)
    calm = np.full((3000, 1), 0.3)  # already calibrated: temperature about 1
    temperatures = fit_temperature(np.hstack([sharp, calm]), np.hstack([sharp_targets, calm_targets]), multi_label=True)
    assert temperatures[0] == pytest.approx(2.0, rel=0.15) and temperatures[1] == pytest.approx(1.0, abs=0.3)
    p = np.array([[0.2, 0.9], [0.5, 0.01]])
    assert calibrated(p, [1.0, 1.0], True) == pytest.approx(p, abs=1e-9)
    assert np.isfinite(logits_of(np.array([[0.0, 1.0]]), True)).all()  # clipped, never infinite


def test_held_out_quality_fits_on_the_other_folds():
    folds = [_overconfident(800, seed, 2.5) for seed in range(3)]
    quality = held_out_quality(folds, multi_label=False)
    assert quality["nll_after"] < quality["nll_before"] and quality["ece_after"] < quality["ece_before"]
    assert "other folds" in quality["estimated"]
    assert "optimistic" in held_out_quality(folds[:1], multi_label=False)["estimated"]


def test_patient_level_mean_and_max():
    cases = ["a1", "a2", "b1", "b2", "c1"]
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c1": "C"}
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4], [0.2, 0.8]])
    onehot = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [0, 1]])
    result = patient_level(cases, probabilities, onehot, groups, ["normal", "pneumonia"], multi_label=False)
    assert result["patients"] == 3 and result["images"] == 5
    # mean: A 0.4, B 0.3, C 0.8 for pneumonia -> both pneumonia patients above the normal one
    assert result["mean"]["per_class"]["pneumonia"]["auc"] == pytest.approx(1.0)
    assert result["max"]["num_cases"] == 3
    disagreeing = patient_level(cases, probabilities, np.array([[0, 1], [1, 0], [1, 0], [1, 0], [0, 1]]), groups, ["normal", "pneumonia"], False)
    assert "patient A's images have different classes" in disagreeing["skipped"]
    assert patient_level(cases, probabilities, onehot, {}, ["normal", "pneumonia"], False) is None
    multi = patient_level(cases, probabilities, np.array([[0, 1], [1, 0], [1, 0], [0, 0], [0, 1]]), groups, ["x", "y"], True)
    assert multi["mean"]["per_class"]["y"]["positives"] == 2  # A (any image) and C


def test_views_follow_the_training_augmentation():
    radiograph = [name for name, _ in view_transforms(RADIOGRAPH)]
    assert radiograph[0] == "identity" and not any(name.startswith("flip") for name in radiograph) and len(radiograph) == 6
    photograph = [name for name, _ in view_transforms(PHOTOGRAPH)]
    assert {"flip0", "flip1", "flip01"} <= set(photograph)
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    flips = dict(view_transforms(PHOTOGRAPH))
    assert torch.allclose(apply_view(image, flips["flip1"]), image.flip(-1), atol=1e-5)  # axis 1: columns
    assert torch.allclose(apply_view(image, flips["flip0"]), image.flip(-2), atol=1e-5)
    assert torch.allclose(apply_view(image, dict(view_transforms(RADIOGRAPH))["identity"]), image, atol=1e-5)
