"""Losses, augmentation, sampling, resampling, metrics: the pieces under the trainer."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from medseg.evaluation.metrics import case_metrics, dice, surface_metrics
from medseg.tasks.segmentation.evaluation.postprocessing import keep_largest_component
from medseg.tasks.segmentation.inference.sliding_window import fastest_windows_per_batch, gaussian_importance, predict_logits, window_starts
from medseg.tasks.segmentation.preprocessing.normalization import normalize_channel
from medseg.tasks.segmentation.preprocessing.resampling import coarse_axis, resample_image, resample_labels
from medseg.tasks.segmentation.training.augmentation import AugmentationSettings, spatial_transform
from medseg.tasks.segmentation.training.losses import DiceCELoss, deep_supervision_scales, deep_supervision_weights
from medseg.training.splits import make_splits


def test_dice_ce_loss_prefers_the_right_answer():
    target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    target[:, :, 2:6, 2:6] = 1
    right = torch.where(target == 1, 10.0, -10.0).float()
    logits_right = torch.cat([-right, right], dim=1)
    loss = DiceCELoss(batch_dice=True)
    assert loss(logits_right, target) < 0.01
    assert loss(-logits_right, target) > 1.5


def test_deep_supervision_weights_and_scales():
    weights = deep_supervision_weights(4)
    assert abs(sum(weights) - 1) < 1e-9 and weights[-1] == 0 and weights[0] == 2 * weights[1]
    scales = deep_supervision_scales([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    assert scales == [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25]]


def test_spatial_transform_identity_and_rotation_keep_labels():
    rng = np.random.default_rng(0)
    data = torch.randn(1, 40, 40)
    seg = torch.zeros(1, 40, 40, dtype=torch.long)
    seg[:, 15:25, 10:30] = 2
    still = AugmentationSettings(p_rotation=0.0, p_scale=0.0)
    image, labels = spatial_transform(data, seg, (20, 20), still, rng)
    assert torch.equal(image, data[:, 10:30, 10:30]) and torch.equal(labels, seg[:, 10:30, 10:30])
    rotate = AugmentationSettings(p_rotation=1.0, p_scale=1.0)
    image, labels = spatial_transform(data, seg, (20, 20), rotate, rng)
    assert image.shape == (1, 20, 20) and set(labels.unique().tolist()) <= {0, 2}


def test_resampling_shapes_and_anisotropic_axis():
    data = np.random.default_rng(0).normal(size=(1, 10, 40, 40)).astype(np.float32)
    assert coarse_axis((5.0, 1.0, 1.0), (5.0, 2.0, 2.0), 3.0) == 0
    assert coarse_axis((1.0, 1.0, 1.0), (1.5, 1.5, 1.5), 3.0) is None
    assert resample_image(data, (10, 20, 20), axis=0).shape == (1, 10, 20, 20)
    label = np.zeros((10, 40, 40), np.int16)
    label[3:7, 10:30, 10:30] = 3
    label[3:7, 12:16, 12:16] = 1
    assert set(np.unique(resample_labels(label, (5, 20, 20), axis=0))) == {0, 1, 3}
    small = resample_labels(label, (10, 20, 20), axis=0)  # in-plane only: linear per label
    back = resample_labels(small, (10, 40, 40), axis=0)
    assert dice(back == 3, label == 3) > 0.9 and dice(back == 1, label == 1) > 0.7


def test_normalisation_schemes():
    channel = np.array([[0.0, 10.0], [20.0, 30.0]], np.float32)
    z = normalize_channel(channel, "zscore", {}, None)
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5
    ct = normalize_channel(channel, "ct", {"percentile_00_5": 5.0, "percentile_99_5": 25.0, "mean": 15.0, "std": 5.0}, None)
    assert ct.min() == -2.0 and ct.max() == 2.0
    assert normalize_channel(channel, "rgb_to_0_1", {}, None).max() == 30 / 255


def test_metrics_on_known_shapes():
    reference = np.zeros((20, 20), bool)
    reference[5:15, 5:15] = True
    shifted = np.roll(reference, 2, axis=1)
    assert dice(reference, reference) == 1.0 and np.isnan(dice(~np.ones_like(reference), ~np.ones_like(reference)))
    nsd, hd95 = surface_metrics(shifted, reference, (1.0, 1.0), tolerance_mm=2.0)
    assert nsd == 1.0 and hd95 == 2.0
    nsd, hd95 = surface_metrics(shifted, reference, (1.0, 0.5), tolerance_mm=0.5)
    assert nsd < 1.0 and hd95 == 1.0  # 2 voxels at 0.5 mm
    metrics = case_metrics(shifted.astype(int), reference.astype(int), (1.0, 1.0), {"background": 0, "x": 1}, {})
    assert abs(metrics["x"]["dice"] - 0.8) < 1e-9


def test_largest_component_filter():
    labels = np.zeros((10, 10), np.uint8)
    labels[1:5, 1:5] = 1
    labels[7, 7] = 1
    labels[8, 1] = 2
    kept = keep_largest_component(labels, 1)
    assert kept[7, 7] == 0 and kept[2, 2] == 1 and kept[8, 1] == 2


def test_sliding_window_covers_everything_and_is_exact_for_pointwise_nets():
    assert window_starts(100, 40, 0.5) == [0, 20, 40, 60]
    assert window_starts(30, 40, 0.5) == [0]
    weight = gaussian_importance((8, 8))
    assert weight.max() == 1 and weight.min() > 0
    network = torch.nn.Conv3d(1, 2, 1)
    data = torch.randn(1, 7, 30, 50)
    logits = predict_logits(network, data, (8, 16, 16), 2, 0.5, mirror_axes=(0, 2))
    with torch.no_grad():
        expected = network(data[None])[0]
    assert logits.shape == (2, 7, 30, 50) and torch.allclose(logits, expected, atol=1e-5)


def test_windows_per_forward_pass_are_measured_and_do_not_change_the_logits():
    class SlowForOneWindow(torch.nn.Module):  # a batch of one pays a fixed cost, as PyTorch's slow 3D conv path does
        calls: list[int] = []

        def forward(self, x):
            self.calls.append(x.shape[0])
            if x.shape[0] == 1:
                time.sleep(0.05)
            return torch.cat([x, -x], dim=1)

    network = SlowForOneWindow()
    assert fastest_windows_per_batch(network, (1, 8, 16, 16)) == 2
    assert network.calls == [1, 1, 2, 2]  # a warm-up and a timed call of each
    assert fastest_windows_per_batch(network, (1, 8, 16, 16)) == 2 and len(network.calls) == 4  # measured once
    data = torch.randn(1, 20, 30, 40)
    one, two = (predict_logits(network, data, (8, 16, 16), 2, 0.5, (0, 2), windows_per_batch=n) for n in (1, 2))
    assert torch.allclose(one, two, atol=1e-6)


@pytest.mark.parametrize("patch", [(16, 20, 20), (7, 12, 9), (64, 64)])
def test_window_weights_equal_nnunets(patch):
    """Overlapping windows are blended with nnU-Net's own weights, so its models give its labels."""
    from tests.conftest import require_peer

    require_peer("nnunetv2")
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    theirs = compute_gaussian(patch, 1 / 8, 1, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.allclose(gaussian_importance(tuple(patch)), theirs / theirs.max(), rtol=1e-5, atol=1e-7)


def test_splits_are_disjoint_and_cover_all_cases():
    ids = [f"c{i}" for i in range(13)]
    splits = make_splits(ids)
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == sorted(ids)
    assert all(not set(s["train"]) & set(s["val"]) for s in splits)
    assert make_splits(ids) == splits


def _random_masks(rng, shape, kind):
    if kind == "empty_both":
        return np.zeros(shape, bool), np.zeros(shape, bool)
    if kind == "full":
        return np.ones(shape, bool), np.ones(shape, bool)
    from scipy import ndimage

    blobs = [ndimage.gaussian_filter(rng.random(shape), 2) for _ in range(2)]
    return blobs[0] > np.percentile(blobs[0], 70), blobs[1] > np.percentile(blobs[1], 65)


@pytest.mark.parametrize("kind", ["random", "full", "empty_both"])
@pytest.mark.parametrize(("shape", "spacing"), [((40, 36), (0.7, 1.3)), ((14, 30, 26), (3.0, 0.8, 0.8))])
def test_metrics_equal_monai(shape, spacing, kind):
    """Dice, NSD and HD95 against MONAI's reference implementation, anisotropic spacing."""
    from tests.conftest import require_peer

    require_peer("monai")
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(len(shape) + len(kind))
    for _ in range(3):
        prediction, reference = _random_masks(rng, shape, kind)
        as_onehot = lambda mask: torch.from_numpy(np.stack([~mask, mask]))[None].float()  # noqa: E731
        p, r = as_onehot(prediction), as_onehot(reference)
        theirs_dice = float(compute_dice(p, r, include_background=False, ignore_empty=True)[0, 0])
        theirs_nsd = float(compute_surface_dice(p, r, class_thresholds=[1.5], include_background=False, spacing=list(spacing))[0, 0])
        theirs_hd = float(compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=list(spacing))[0, 0])
        ours_nsd, ours_hd = surface_metrics(prediction, reference, spacing, tolerance_mm=1.5)
        ours_dice = dice(prediction, reference)
        for ours, theirs in ((ours_dice, theirs_dice), (ours_nsd, theirs_nsd), (ours_hd, theirs_hd)):
            assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), (kind, ours, theirs)  # MONAI returns float32
