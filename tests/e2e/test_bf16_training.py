"""bf16 training: the forward runs under bf16 autocast (its convolutions produce bf16), the weights,
optimizer state and loss stay float32, and the sequence kernels keep computing in float32 inside
an autocast region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.data.builder import RawDatasetBuilder
from medseg.experiment import Experiment
from medseg.io import MedicalImage
from medseg.pipeline import run_fingerprint, run_plan, run_preprocess, run_train
from medseg.training.trainer import TrainingOptions
from tests.conftest import BRIGHT_DATASET, build_bright_dataset


def build_2d_dataset(raw, cases: int = 4) -> None:
    rng = np.random.default_rng(0)
    with RawDatasetBuilder(raw, ".png") as builder:
        for index in range(cases):
            label = np.zeros((1, 48, 40), np.uint8)
            label[0, 10 + index : 30, 8:28] = 1
            image = (rng.normal(80, 20, (1, 48, 40)) + 80 * label).clip(0, 255).astype(np.uint8)
            geometry = ((1.0, 1.0), (0.0, 0.0), np.eye(2)[::-1])
            builder.add_image(f"c{index}", MedicalImage(image, *geometry))
            builder.add_label(f"c{index}", MedicalImage(label, *geometry))
        builder.finish({"channel_names": {"0": "rescale_to_0_1"}, "labels": {"background": 0, "a": 1}, "numTraining": cases, "file_ending": ".png"})


@pytest.mark.parametrize("dimensions", ["3d", "2d"])
def test_one_epoch_trains_under_bf16_autocast_with_float32_weights(dimensions, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_ROOT", str(tmp_path))
    if dimensions == "3d":
        raw, configuration = tmp_path / "raw" / BRIGHT_DATASET, "3d_fullres"
        build_bright_dataset(raw, cases=4)
    else:
        raw, configuration = tmp_path / "raw" / "Dataset322_Flat", "2d"
        build_2d_dataset(raw)
    experiment = Experiment.open(raw, "unet")
    run_fingerprint(experiment.description, workers=1)
    run_plan(experiment, precision="bfloat16")
    assert experiment.plans.planner["precision"] == "bfloat16"  # the CPU plan timed bf16 steps
    run_preprocess(experiment, [configuration], workers=1)

    from medseg.training import trainer as trainer_module

    seen: dict[str, set] = {"conv": set(), "loss": set(), "weights": set()}
    original_init = trainer_module.Trainer.__init__

    def recording_init(self, task, context, log=print):
        original_init(self, task, context, log)
        network = self.task_run.network
        first_conv = next(m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
        first_conv.register_forward_hook(lambda module, inputs, output: seen["conv"].add(output.dtype))
        loss = self.task_run.loss
        loss.register_forward_hook(lambda module, inputs, output: seen["loss"].add(output.dtype))
        seen["weights"].update(p.dtype for p in network.parameters())

    monkeypatch.setattr(trainer_module.Trainer, "__init__", recording_init)
    options = TrainingOptions(epochs=1, iterations_per_epoch=2, val_iterations=1, final_validation=False, background_loading=False, precision="bfloat16")
    run_train(experiment, configuration, "0", options, log=lambda message: None)
    assert seen == {"conv": {torch.bfloat16}, "loss": {torch.float32}, "weights": {torch.float32}}, seen
    log = __import__("json").loads((experiment.model_folder_path(configuration) / "fold_0" / "log.json").read_text())
    assert log["precision"] == "bfloat16" and np.isfinite(log["epochs"][0]["train_loss"])


def test_float32_stays_float32(tmp_path, monkeypatch):
    from medseg.precision import autocast, resolve_precision

    with autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")
    assert resolve_precision("float32", torch.device("cpu")) == "float32"
    with pytest.raises(Exception, match="unknown precision 'half'"):
        TrainingOptions(precision="half")


def test_the_sequence_kernels_compute_in_float32_inside_a_bf16_region():
    """Under autocast, a kernel's float32 matmuls would run in bf16 (errors near 1e-2); the
    dispatchers turn autocast off around every backend."""
    from medseg_kernels.mlstm import mlstm
    from medseg_kernels.selective_scan import selective_scan

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=generator) for _ in range(3))
    i, f = torch.randn(1, 2, 64, generator=generator), torch.randn(1, 2, 64, generator=generator) + 3
    reference = mlstm(q, k, v, i, f, backend="chunkwise")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = mlstm(q, k, v, i, f, backend="chunkwise")
    assert inside.dtype == torch.float32 and torch.allclose(inside, reference, atol=1e-5)

    u, delta = torch.randn(1, 8, 32, generator=generator), torch.rand(1, 8, 32, generator=generator)
    A, B, C = -torch.rand(8, 4, generator=generator), torch.randn(1, 4, 32, generator=generator), torch.randn(1, 4, 32, generator=generator)
    reference = selective_scan(u, delta, A, B, C, backend="ref")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = selective_scan(u, delta, A, B, C, backend="ref")
    assert torch.allclose(inside, reference, atol=1e-5)
