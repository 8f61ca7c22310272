"""The trainer: the training loop shared by every task and model family.

It owns only what every task needs: devices and DDP (launched by ``torchrun``: each process trains
on its share of the batch and gradients are averaged; gloo on CPU, NCCL on GPU; only rank 0 writes
files), epochs and the time budget, checkpoints (latest every epoch, best by the moving average of
the task's validation score, final) and ``--continue``, the JSON log and the curve PNG. Everything
else - batches, losses, optimizers, the step, the score, the final validation - comes from the
task's training run (``medseg.tasks``), so a new task or family never needs a trainer subclass."""

from __future__ import annotations

import gc
import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from medseg.atomic import write_json_atomic
from medseg.errors import MedsegError
from medseg.model_card import record_weights
from medseg.precision import autocast, check_precision, resolve_precision
from medseg.tasks.registry import RunContext, Task, TrainingRun
from medseg.training.checkpoint import load_checkpoint, module_states, restore_rng_state, rng_state, save_checkpoint
from medseg.training.curves import draw_curves
from medseg.training.optimizers import DEFAULT_LR

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
    save_probabilities: bool = False  # the final validation also keeps each held-out case's probabilities (ensembles)
    mirror_tta: bool = True
    continue_training: bool = False
    pretrained: str | None = None  # weights to start from (a task that supports it: a ViT encoder from `medseg pretrain`)
    precision: str = "float32"  # the forward's: float32, bfloat16 (autocast, float32 weights and loss) or auto (medseg.precision)

    def __post_init__(self) -> None:
        check_precision(self.precision)
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
    best_ema: float | None = None  # None until the first epoch (a task's score may be negative, e.g. -RMSE)
    ema: float | None = None
    elapsed_s: float = 0.0
    log: list[dict] = field(default_factory=list)


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




def peak_memory_mb(device: torch.device) -> dict:
    """This process's peak resident memory so far, and the device's peak allocation on a GPU."""
    peak = {"process_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KB
    if device.type == "cuda":
        peak["device_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


class Trainer:
    """One fold of one configuration: ``task.start_run`` supplies the task's side of the loop."""

    def __init__(self, task: Task, context: RunContext, log: Callable[[str], None] = print):
        options = context.options
        self.task, self.options = task, options
        self.fold_folder = context.fold_folder
        self.train_cases, self.val_cases = context.train_cases, context.val_cases
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.distributed = Distributed(torch.device(device).type)
        if torch.device(device).type == "cuda" and self.distributed.world_size > 1:
            device = f"cuda:{self.distributed.local_rank}"
        self.device = torch.device(device)
        self.log_line = log if self.distributed.main else (lambda message: None)
        context.device, context.world_size, context.log = self.device, self.distributed.world_size, self.log_line
        self.configuration_name = context.configuration.name
        self.task_run: TrainingRun = task.start_run(context)
        for module in self.task_run.modules.values():
            module.to(self.device)
        self.models = {name: self._distributed(module) for name, module in self.task_run.modules.items()}
        self.precision = self._precision(resolve_precision(options.precision, self.device))
        self.state = TrainingState(
            planned_epochs=options.epochs or 1000,
            iterations_per_epoch=options.iterations_per_epoch,
            calibrated=options.time_budget_s is None,
        )

    def _precision(self, requested: str) -> str:
        """bf16 only for a run that declares it (``mixed_precision``: its losses computed in
        float32); the others say why they stay in float32."""
        if requested == "bfloat16" and not getattr(self.task_run, "mixed_precision", False):
            reason = getattr(self.task_run, "float32_reason", f"the {self.task.name} task does not train in bf16 yet")
            self.log_line(f"precision: float32 ({reason})")
            return "float32"
        return requested

    def _distributed(self, module: torch.nn.Module) -> torch.nn.Module:
        trainable = any(p.requires_grad for p in module.parameters())
        if self.distributed.world_size == 1 or not trainable:
            return module
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ----------------------------------------------------------------------------------- schedule
    def _set_progress(self) -> None:
        """Every optimizer group's rate: the run's rate x the group's scale (layer decay) x the
        run's schedule at this point of the planned iterations."""
        total = self.state.planned_epochs * self.state.iterations_per_epoch
        run = self.task_run
        factor = run.schedule(min(self.state.iteration / max(total, 1), 1.0))
        for optimizer in run.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = run.learning_rate * group.get("lr_scale", 1.0) * factor

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
        self._set_progress()
        own_step = getattr(self.task_run, "train_step", None)  # a task with an unusual step (HAG's routing) runs its own
        if own_step:
            with autocast(self.device, self.precision):
                loss = own_step(batch, self.models)
        else:
            loss = self._step(batch)
        if not math.isfinite(loss):
            raise MedsegError(f"training diverged (loss {loss}) at iteration {self.state.iteration}; try a lower --learning-rate")
        self.state.iteration += 1
        return loss

    def _step(self, batch) -> float:
        """zero-grad, the task's loss of the batch, backward, gradient clipping, every optimizer's step."""
        run = self.task_run
        for optimizer in run.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):  # the forward only: backward follows the forward's dtypes
            loss = run.batch_loss(batch, self.models)
        if not torch.isfinite(loss):
            return float(loss.item())  # no step is taken: the caller stops with a clear error
        loss.backward()
        clip = getattr(run, "gradient_clip", None)
        if clip:
            owned = [p for optimizer in run.optimizers.values() for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(owned, clip)
        for optimizer in run.optimizers.values():
            optimizer.step()
        return float(loss.item())

    # -------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, name: str) -> None:
        if not self.distributed.main:
            return
        save_checkpoint(
            self.fold_folder / f"checkpoint_{name}.pt",
            {
                "task": self.task.name,
                "modules": {key: module.state_dict() for key, module in self.task_run.modules.items()},
                "optimizers": {key: optimizer.state_dict() for key, optimizer in self.task_run.optimizers.items()},
                "state": asdict(self.state),
                "options": asdict(self.options),
                "rng": rng_state(),
                "configuration": self.configuration_name,
            },
        )
        if name in ("final", "best"):
            record_weights(self.fold_folder / f"checkpoint_{name}.pt")  # a model card, if any, follows

    def _resume(self) -> bool:
        path = self.fold_folder / "checkpoint_latest.pt"
        if not path.is_file():
            self.log_line(f"--continue: no checkpoint in {self.fold_folder}, starting from scratch")
            return False
        content = load_checkpoint(path)
        if content.get("configuration") != self.configuration_name:
            raise MedsegError(f"{path}: belongs to configuration {content.get('configuration')}, not {self.configuration_name}")
        states = module_states(content, path)
        optimizers = content.get("optimizers") or {"network": content.get("optimizer")}
        for key, module in self.task_run.modules.items():
            if key not in states:
                raise MedsegError(f"{path}: has no state for module '{key}' (holds {', '.join(states)})")
            module.load_state_dict(states[key])
        for key, optimizer in self.task_run.optimizers.items():
            if optimizers.get(key) is None:
                raise MedsegError(f"{path}: has no state for optimizer '{key}'")
            optimizer.load_state_dict(optimizers[key])
        self.state = TrainingState(**content["state"])
        if self.options.epochs is not None and self.options.time_budget_s is None:
            self.state.planned_epochs = self.options.epochs  # --continue --epochs N trains on to N
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
        train_batches = self.task_run.batches("train", seed, self.options.background_loading)
        val_batches = self.task_run.batches("val", seed + 1, False)
        started = time.perf_counter() - self.state.elapsed_s
        self.log_line(
            f"{self.task_run.describe()} on {len(self.train_cases)} cases, validating on {len(self.val_cases)}; "
            f"device {self.device}, {self.distributed.world_size} process(es), {self.precision}"
        )
        score_name = self.task_run.score_name
        while self.state.epoch < self.state.planned_epochs:
            epoch_start = time.perf_counter()
            for model in self.models.values():
                model.train()
            losses, step_times = [], []
            while len(losses) < self.state.iterations_per_epoch:
                step_start = time.perf_counter()
                losses.append(self._train_step(next(train_batches)))
                step_times.append(time.perf_counter() - step_start)
                if not self.state.calibrated and len(step_times) == 2 + CALIBRATION_STEPS:
                    self._calibrate(float(np.mean(step_times[2:])))  # the first steps warm up allocators and the loader
            if not self.state.calibrated:
                self._calibrate(float(np.mean(step_times[1:] or step_times)))
            for model in self.models.values():
                model.eval()
            val_losses, totals = [], None
            with torch.no_grad(), autocast(self.device, self.precision):
                for _ in range(self._val_iterations()):
                    loss, statistics = self.task_run.val_step(next(val_batches), self.models)
                    val_losses.append(loss)
                    totals = statistics if totals is None else totals + statistics
            score, entries = self.task_run.score(self.distributed.sum_array(totals))
            self.state.ema = score if self.state.ema is None else 0.9 * self.state.ema + 0.1 * score
            self.state.epoch += 1
            self.state.elapsed_s = time.perf_counter() - started
            record = {
                "epoch": self.state.epoch,
                "train_loss": self.distributed.mean(float(np.mean(losses))),
                "val_loss": self.distributed.mean(float(np.mean(val_losses))) if val_losses else None,
                **entries,
                f"{score_name}_ema": round(self.state.ema, 4),
                "learning_rate": max(group["lr"] for group in next(iter(self.task_run.optimizers.values())).param_groups),  # the head's under layer decay
                "epoch_seconds": round(time.perf_counter() - epoch_start, 2),
            }
            self.state.log.append(record)
            improved = self.state.best_ema is None or self.state.ema > self.state.best_ema
            if improved:
                self.state.best_ema = self.state.ema
                self._checkpoint("best")
            self._checkpoint("latest")
            end_of_epoch = getattr(self.task_run, "end_of_epoch", None)  # optional: a task's own per-epoch outputs
            if end_of_epoch is not None and self.distributed.main:
                end_of_epoch(self.state.epoch)
            self._write_log(score_name)
            self.log_line(
                f"epoch {self.state.epoch}/{self.state.planned_epochs}: train {record['train_loss']:.4f} "
                f"val {record['val_loss']:.4f} {getattr(self.task_run, 'score_label', score_name)} {score:.4f} (ema {self.state.ema:.4f}{', best' if improved else ''}) "
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
        # the DDP wrappers hold the process group: drop them before it goes, or their teardown at
        # exit can touch a destroyed group (a torchrun worker once aborted with SIGABRT after training)
        self.models, model = dict(self.task_run.modules), None  # also the loops' last wrapper
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.distributed.main and self.options.final_validation and self.val_cases:
            return self.task_run.final_validation()
        return None

    def _write_log(self, score_name: str) -> None:
        if not self.distributed.main:
            return
        content = {
            "options": asdict(self.options), "precision": self.precision,
            "state": {k: v for k, v in asdict(self.state).items() if k != "log"},
            "peak_memory_mb": peak_memory_mb(self.device), "epochs": self.state.log,
        }
        write_json_atomic(self.fold_folder / "log.json", content)
        draw_curves(self.fold_folder / "progress.png", self.state.log, f"{score_name}_ema")
