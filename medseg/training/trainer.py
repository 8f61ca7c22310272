"""The trainer: one class for every registered segmentation model, configured by plans and flags.

Per iteration: a batch of patches (sampled and augmented in a worker process), deep-supervised
Dice + CE, SGD-Nesterov (or AdamW) with a poly learning-rate decay. Per epoch: pseudo-Dice on
validation patches, checkpoints (latest every epoch, best by the moving average of pseudo-Dice),
JSON log and curve PNG. At the end: the final checkpoint and a full sliding-window validation of
the fold's held-out cases in their original geometry.

Multi-process training: launched by ``torchrun``, each process trains on its share of the batch
and gradients are averaged (DDP; gloo on CPU, NCCL on GPU). Only rank 0 writes files."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.models.registry import build_model
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.training.augmentation import AugmentationSettings
from medseg.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from medseg.training.curves import draw_curves
from medseg.training.loader import PatchSampler, batch_stream
from medseg.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights

DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 3e-5, "adamw": 1e-2}
MIN_EPOCHS_UNDER_BUDGET = 10  # a time budget is split into at least this many epochs (for checkpoints/curves)
CALIBRATION_STEPS = 4
REFIT_EPOCHS = 3  # the time budget is re-fitted from the mean duration of this many recent epochs


@dataclass
class TrainingOptions:
    epochs: int | None = None  # None: 1000, or as many as the time budget buys
    iterations_per_epoch: int = 250
    val_iterations: int | None = None  # None: a fifth of the iterations per epoch (nnU-Net: 50 per 250)
    learning_rate: float | None = None  # None: the plan's
    optimizer: str | None = None  # "sgd" or "adamw"; None: the plan's
    batch_size: int | None = None  # None: the plan's
    time_budget_s: float | None = None
    seed: int = 0
    device: str | None = None
    background_loading: bool = True
    final_validation: bool = True
    mirror_tta: bool = True
    continue_training: bool = False

    def __post_init__(self) -> None:
        if self.optimizer is not None and self.optimizer not in DEFAULT_LR:
            raise MedsegError(f"unknown optimizer '{self.optimizer}' (choose {', '.join(DEFAULT_LR)})")
        for name in ("epochs", "iterations_per_epoch", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MedsegError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise MedsegError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise MedsegError(f"--time-budget must be positive, got {self.time_budget_s}")


@dataclass
class TrainingState:
    epoch: int = 0  # epochs completed
    iteration: int = 0
    planned_epochs: int = 1000
    iterations_per_epoch: int = 250
    calibrated: bool = False
    best_ema: float = -1.0
    ema: float | None = None
    elapsed_s: float = 0.0
    log: list[dict] = field(default_factory=list)


def deep_supervision_scales(strides: list[list[int]]) -> list[list[float]]:
    """Resolution of each decoder output relative to the patch, full resolution first."""
    cumulative = np.cumprod(np.array(strides, dtype=float), axis=0)
    return [list(1.0 / row) for row in cumulative[:-1]]


def augmentation_for(configuration: ConfigurationPlan) -> AugmentationSettings:
    """The plan's spatial augmentation (see medseg.planning.planner.augmentation_plan)."""
    plan = configuration.augmentation
    if not plan:
        raise MedsegError(f"configuration {configuration.name} has no augmentation plan; re-plan with `medseg plan`")
    return AugmentationSettings(
        rotation_degrees=float(plan["rotation_degrees"]), in_plane_only=bool(plan["in_plane_only"]), mirror_axes=tuple(plan["mirror_axes"])
    )


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self, device_type: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return array
        tensor = torch.from_numpy(array.astype(np.float64))
        dist.all_reduce(tensor)
        return tensor.numpy()

    def broadcast_int(self, value: int) -> int:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64)
        dist.broadcast(tensor, 0)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


class Trainer:
    def __init__(
        self,
        plans: Plans,
        configuration: ConfigurationPlan,
        preprocessed_folder: Path,
        fold_folder: Path,
        train_cases: list[str],
        val_cases: list[str],
        options: TrainingOptions,
        log: Callable[[str], None] = print,
    ):
        self.plans, self.configuration, self.options = plans, configuration, options
        self.data_folder, self.fold_folder = preprocessed_folder, fold_folder
        self.train_cases, self.val_cases = train_cases, val_cases
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.distributed = Distributed(torch.device(device).type)
        if torch.device(device).type == "cuda" and self.distributed.world_size > 1:
            device = f"cuda:{self.distributed.local_rank}"
        self.device = torch.device(device)
        self.log_line = log if self.distributed.main else (lambda message: None)
        self.num_classes = plans.num_classes
        self.network = build_model(configuration.architecture, len(plans.channel_names), self.num_classes, deep_supervision=True).to(self.device)
        if self.distributed.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.model = self.network
        scales = deep_supervision_scales(configuration.architecture["kwargs"]["strides"])
        self.scales = scales
        self.loss = DeepSupervisionLoss(DiceCELoss(configuration.batch_dice), deep_supervision_weights(len(scales)))
        optimizer = options.optimizer or configuration.training.get("optimizer", "sgd")
        self.learning_rate = options.learning_rate or (
            configuration.training.get("learning_rate") if optimizer == configuration.training.get("optimizer") else None
        ) or DEFAULT_LR[optimizer]
        self.optimizer_name = optimizer
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.network.parameters(), self.learning_rate, momentum=0.99, nesterov=True, weight_decay=DEFAULT_WEIGHT_DECAY["sgd"])
        else:
            self.optimizer = torch.optim.AdamW(self.network.parameters(), self.learning_rate, weight_decay=DEFAULT_WEIGHT_DECAY["adamw"])
        total_batch = options.batch_size or configuration.batch_size
        self.batch_size = max(1, total_batch // self.distributed.world_size)
        self.augmentation = augmentation_for(configuration)
        self.state = TrainingState(
            planned_epochs=options.epochs or 1000,
            iterations_per_epoch=options.iterations_per_epoch,
            calibrated=options.time_budget_s is None,
        )

    # ----------------------------------------------------------------------------------- schedule
    def _set_learning_rate(self) -> None:
        total = self.state.planned_epochs * self.state.iterations_per_epoch
        progress = min(self.state.iteration / max(total, 1), 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate * (1 - progress) ** 0.9

    def _calibrate(self, step_seconds: float) -> None:
        """Turn a time budget into epochs x iterations, from the measured step time."""
        budget = self.options.time_budget_s
        val_share = self._val_iterations() / 3.0  # a validation step is a forward pass only
        per_iteration = step_seconds * (1 + val_share / self.state.iterations_per_epoch)
        total_iterations = max(1, int(budget / per_iteration))
        iterations_per_epoch = self.state.iterations_per_epoch
        if total_iterations < MIN_EPOCHS_UNDER_BUDGET * iterations_per_epoch:
            iterations_per_epoch = max(1, total_iterations // MIN_EPOCHS_UNDER_BUDGET)
        epochs = max(1, total_iterations // iterations_per_epoch)
        if self.options.epochs is not None:
            epochs = min(epochs, self.options.epochs)
        epochs = self.distributed.broadcast_int(epochs)
        iterations_per_epoch = self.distributed.broadcast_int(iterations_per_epoch)
        self.state.planned_epochs, self.state.iterations_per_epoch, self.state.calibrated = epochs, iterations_per_epoch, True
        self.log_line(f"time budget {budget:.0f} s at {step_seconds:.2f} s/step: {epochs} epochs x {iterations_per_epoch} iterations")

    def _fit_epochs_to_budget(self) -> None:
        """After every epoch, the real duration of the recent epochs (loading, validation,
        checkpoints, and whatever else shares the machine) re-fits the epochs to the time left."""
        recent = [record["epoch_seconds"] for record in self.state.log[-REFIT_EPOCHS:]]
        epoch_seconds = max(float(np.mean(recent)), 1e-6)
        remaining = self.options.time_budget_s - self.state.elapsed_s
        epochs = self.state.epoch + max(0, int(remaining // epoch_seconds))
        epochs = self.distributed.broadcast_int(max(1, min(epochs, self.options.epochs or epochs)))
        if epochs != self.state.planned_epochs:
            self.log_line(f"epochs take {epoch_seconds:.1f} s: planning {epochs} epochs instead of {self.state.planned_epochs}")
            self.state.planned_epochs = epochs

    def _val_iterations(self) -> int:
        if self.options.val_iterations is not None:
            return self.options.val_iterations
        return max(1, self.state.iterations_per_epoch // 5)

    # ------------------------------------------------------------------------------------- steps
    def _train_step(self, batch) -> float:
        data, targets = batch
        data = data.to(self.device, non_blocking=True)
        targets = [t.to(self.device, non_blocking=True) for t in targets]
        self._set_learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(data), targets)
        if not torch.isfinite(loss):
            raise MedsegError(f"training diverged (loss {loss.item()}) at iteration {self.state.iteration}; try a lower --learning-rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12.0)
        self.optimizer.step()
        self.state.iteration += 1
        return float(loss.item())

    @torch.no_grad()
    def _val_step(self, batch) -> tuple[float, np.ndarray]:
        data, targets = batch
        data = data.to(self.device)
        targets = [t.to(self.device) for t in targets]
        outputs = self.model(data)
        loss = float(self.loss(outputs, targets).item())
        prediction = outputs[0].argmax(1)
        reference = targets[0][:, 0]
        counts = np.zeros((3, self.num_classes - 1))
        for value in range(1, self.num_classes):
            p, r = prediction == value, reference == value
            counts[:, value - 1] = [(p & r).sum().item(), (p & ~r).sum().item(), (~p & r).sum().item()]
        return loss, counts

    # -------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, name: str) -> None:
        if not self.distributed.main:
            return
        save_checkpoint(
            self.fold_folder / f"checkpoint_{name}.pt",
            {
                "network": self.network.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state),
                "options": asdict(self.options),
                "rng": rng_state(),
                "configuration": self.configuration.name,
            },
        )

    def _resume(self) -> bool:
        path = self.fold_folder / "checkpoint_latest.pt"
        if not path.is_file():
            self.log_line(f"--continue: no checkpoint in {self.fold_folder}, starting from scratch")
            return False
        content = load_checkpoint(path)
        if content.get("configuration") != self.configuration.name:
            raise MedsegError(f"{path}: belongs to configuration {content.get('configuration')}, not {self.configuration.name}")
        self.network.load_state_dict(content["network"])
        self.optimizer.load_state_dict(content["optimizer"])
        self.state = TrainingState(**content["state"])
        restore_rng_state(content["rng"])
        self.log_line(f"resumed from {path.name}: epoch {self.state.epoch}/{self.state.planned_epochs}, iteration {self.state.iteration}")
        return True

    # --------------------------------------------------------------------------------------- run
    def run(self) -> dict | None:
        self.fold_folder.mkdir(parents=True, exist_ok=True)
        if self.options.continue_training:
            self._resume()
        seed = self.options.seed + 1000 * self.state.epoch + 17 * self.distributed.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        common = dict(patch_size=self.configuration.patch_size, batch_size=self.batch_size, deep_supervision_scales=self.scales)
        train_sampler = PatchSampler(self.data_folder, self.train_cases, augmentation=self.augmentation, seed=seed, **common)
        val_cases = self.val_cases or self.train_cases
        val_sampler = PatchSampler(self.data_folder, val_cases, augmentation=None, seed=seed + 1, **common)
        train_batches = batch_stream(train_sampler, seed, self.options.background_loading)
        val_batches = batch_stream(val_sampler, seed + 1, background=False)
        started = time.perf_counter() - self.state.elapsed_s
        self.log_line(
            f"training {self.configuration.name} ({self.configuration.architecture['name']}) on {len(self.train_cases)} cases, "
            f"validating on {len(self.val_cases)}; patch {self.configuration.patch_size}, batch {self.batch_size * self.distributed.world_size}, "
            f"{self.optimizer_name} lr {self.learning_rate:g}, device {self.device}, {self.distributed.world_size} process(es)"
        )
        while self.state.epoch < self.state.planned_epochs:
            epoch_start = time.perf_counter()
            self.model.train()
            losses = []
            iteration = 0
            step_times = []
            while iteration < self.state.iterations_per_epoch:
                step_start = time.perf_counter()
                losses.append(self._train_step(next(train_batches)))
                step_times.append(time.perf_counter() - step_start)
                iteration += 1
                if not self.state.calibrated and len(step_times) == 2 + CALIBRATION_STEPS:
                    self._calibrate(float(np.mean(step_times[2:])))  # the first steps warm up allocators and the loader
            if not self.state.calibrated:
                self._calibrate(float(np.mean(step_times[1:] or step_times)))
            self.model.eval()
            val_losses, counts = [], np.zeros((3, self.num_classes - 1))
            for _ in range(self._val_iterations()):
                loss, batch_counts = self._val_step(next(val_batches))
                val_losses.append(loss)
                counts += batch_counts
            counts = self.distributed.sum_array(counts)
            tp, fp, fn = counts
            with np.errstate(invalid="ignore", divide="ignore"):
                per_class = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
            pseudo_dice = float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else 0.0
            self.state.ema = pseudo_dice if self.state.ema is None else 0.9 * self.state.ema + 0.1 * pseudo_dice
            self.state.epoch += 1
            self.state.elapsed_s = time.perf_counter() - started
            record = {
                "epoch": self.state.epoch,
                "train_loss": self.distributed.mean(float(np.mean(losses))),
                "val_loss": self.distributed.mean(float(np.mean(val_losses))) if val_losses else None,
                "pseudo_dice": [None if math.isnan(v) else round(float(v), 4) for v in per_class],
                "pseudo_dice_ema": round(self.state.ema, 4),
                "learning_rate": self.optimizer.param_groups[0]["lr"],
                "epoch_seconds": round(time.perf_counter() - epoch_start, 2),
            }
            self.state.log.append(record)
            improved = self.state.ema > self.state.best_ema
            if improved:
                self.state.best_ema = self.state.ema
                self._checkpoint("best")
            self._checkpoint("latest")
            self._write_log()
            self.log_line(
                f"epoch {self.state.epoch}/{self.state.planned_epochs}: train {record['train_loss']:.4f} "
                f"val {record['val_loss']:.4f} pseudo-Dice {pseudo_dice:.4f} (ema {self.state.ema:.4f}{', best' if improved else ''}) "
                f"{record['epoch_seconds']:.1f} s"
            )
            if self.options.time_budget_s:
                self._fit_epochs_to_budget()
            over_budget = bool(self.options.time_budget_s and self.state.elapsed_s > 1.1 * self.options.time_budget_s)
            if self.distributed.broadcast_int(int(over_budget)):  # every process stops together
                self.log_line("time budget used up; stopping early")
                break
        self._checkpoint("final")
        self.distributed.barrier()
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.distributed.main and self.options.final_validation and self.val_cases:
            return self.validate()
        return None

    def _write_log(self) -> None:
        if not self.distributed.main:
            return
        content = {"options": asdict(self.options), "state": {k: v for k, v in asdict(self.state).items() if k != "log"}, "epochs": self.state.log}
        write_json_atomic(self.fold_folder / "log.json", content)
        draw_curves(self.fold_folder / "progress.png", self.state.log)

    def validate(self) -> dict:
        """Sliding-window prediction of the held-out cases from their raw images, then metrics."""
        from medseg.training.validation import validate_fold

        return validate_fold(self.fold_folder, [self.network], self.device, self.val_cases, self.options.mirror_tta, self.log_line)
