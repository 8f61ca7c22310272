"""Every configuration a plan holds trains: the 2d configuration of a 3D dataset samples one slice
per patch (nnU-Net's 2d on volumes), foreground-forced patches from a foreground voxel's slice,
and its final validation predicts the volumes slice by slice."""

from __future__ import annotations

import numpy as np

from medseg.experiment import Experiment
from medseg.pipeline import run_fingerprint, run_plan, run_preprocess, run_train
from medseg.training.trainer import TrainingOptions
from tests.conftest import BRIGHT_DATASET, build_bright_dataset


def test_the_2d_configuration_of_a_3d_dataset_trains_and_validates(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_ROOT", str(tmp_path))
    raw = tmp_path / "raw" / BRIGHT_DATASET
    build_bright_dataset(raw, cases=4)
    experiment = Experiment.open(raw, "unet")
    run_fingerprint(experiment.description, workers=1)
    run_plan(experiment)
    assert len(experiment.plans.configuration("2d").patch_size) == 2
    run_preprocess(experiment, ["2d"], workers=1)
    options = TrainingOptions(epochs=2, iterations_per_epoch=20, val_iterations=2, background_loading=False)
    report = run_train(experiment, "2d", "0", options, log=lambda message: None)
    assert report is not None and np.isfinite(report["foreground_mean"]["dice"])


def test_a_forced_foreground_slice_holds_foreground():
    from medseg.tasks.segmentation.training.loader import PatchSampler

    data = np.zeros((1, 6, 8, 8), np.float32)
    seg = np.zeros((1, 6, 8, 8), np.int8)
    seg[0, 4, 2:4, 5:7] = 1
    locations = {1: np.argwhere(seg[0] == 1)}
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, label, in_plane = PatchSampler._slice(data, seg, locations, rng, force_fg=True)
        assert image.shape == (1, 8, 8) and label.max() == 1 and label[0][tuple(in_plane[1][0])] == 1
    _, _, none = PatchSampler._slice(data, seg, locations, rng, force_fg=False)
    assert none == {}
