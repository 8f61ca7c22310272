"""Task registry: a task is everything that differs between kinds of learning problems, so the
trainer's loop, the pipeline and the CLI never need a fork for a new one.

A task says which raw dataset layouts it learns from, how it fingerprints, plans and preprocesses
them, how a training run makes batches, which optimizers and steps it runs (one or several forward
passes), which validation score picks the "best" checkpoint, how a model folder predicts, and how
cross-validation is reported. Model families name the task that trains them
(``ModelFamily.task_type``). Built-in tasks register when ``medseg.tasks`` imports them; a lab's
own task registers from a plug-in module (``medseg.plugins``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.registry import Registry


@dataclass
class PlanRequest:
    """What the user asked the planner for (``medseg plan`` / ``plan-and-train`` options)."""

    model: str
    plans_name: str
    memory_gb: float | None = None
    step_seconds: float | None = None
    training_seconds: float | None = None  # one run's training budget, when known
    preset: dict | None = None  # a preset's planner settings (medseg_plans)
    model_options: dict | None = None  # a model spec's architecture settings (medseg.models.spec)
    settings: dict | None = None  # task-specific planning choices from the command line (e.g. include_test)


@dataclass
class PredictRequest:
    """``medseg predict`` options: inputs, outputs and how to run the model folder."""

    source: Path
    output: Path
    folds: list[str] | None = None  # None: every trained fold
    checkpoint: str = "auto"
    device: str | None = None
    overlap: float = 0.5  # sliding-window overlap, where the task slides a window
    mirror: bool | list[int] = True  # test-time mirroring where the task allows it: all allowed axes, none, or these
    windows_per_batch: int | None = None  # None: the predictor's default for its device
    save_probabilities: bool = False
    series: str | None = None  # which DICOM series become cases (medseg.inference.inputs rules)
    progress: Callable[[int, int], None] | None = None
    formats: str | None = None  # comma-separated output formats (medseg.inference.outputs); None: the model's label format
    resume: bool = False  # skip cases the output folder's manifest records as complete
    workers: int = 0  # threads reading ahead and writing behind the forward
    runtime: str = "torch"  # or "onnx": an ONNX export run by ONNX Runtime (medseg.inference.onnx_export)
    precision: str = "auto"  # float32, bfloat16 (bf16 autocast forward) or auto (medseg.inference.predictor)
    backend: str = "local"  # or "ray": cases spread over a Ray cluster (medseg.inference.ray_backend); workers = actors
    address: str | None = None  # the Ray cluster (None: a local one started for the run)


@dataclass
class RunContext:
    """One training run of one fold, as the loop hands it to the task."""

    plans: Any  # medseg.planning.plans.Plans
    configuration: Any  # its ConfigurationPlan
    model_folder: Any  # medseg.model_folder.ModelFolder
    fold_folder: Path
    data_folder: Path  # the configuration's preprocessed cases
    train_cases: list[str]
    val_cases: list[str]
    options: Any  # medseg.training.trainer.TrainingOptions
    device: torch.device
    world_size: int
    log: Callable[[str], None]


class TrainingRun(Protocol):
    """What the trainer's loop asks of a task during one run."""

    modules: dict[str, torch.nn.Module]  # saved in checkpoints; those with trainable parameters are wrapped in DDP
    optimizers: dict[str, torch.optim.Optimizer]  # saved in checkpoints and restored by --continue
    score_name: str  # the validation score (higher is better) whose moving average picks checkpoint_best
    # optional: score_label, how the epoch line prints it (default: score_name)

    def describe(self) -> str:
        """One log line: what is trained, with which batch and optimizers."""

    def batches(self, split: str, seed: int, background: bool) -> Iterator:
        """Endless batches of ``split`` ("train" or "val")."""

    def set_progress(self, progress: float) -> None:
        """Learning-rate schedule at ``progress`` in [0, 1] of the planned iterations."""

    def train_step(self, batch, models: dict[str, torch.nn.Module]) -> float:
        """One optimisation step (zero_grad, forward passes, backward, optimizer steps); returns the loss.
        ``models`` are ``modules`` as the loop runs them (DDP-wrapped when distributed)."""

    def val_step(self, batch, models: dict[str, torch.nn.Module]) -> tuple[float, np.ndarray]:
        """Loss and additive statistics of one validation batch (summed over steps and processes)."""

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        """The validation score from the summed statistics, and the entries it adds to the epoch log."""

    def final_validation(self) -> dict | None:
        """After training (main process only): predict and score the held-out cases, write the report."""

    # optional: end_of_epoch(epoch) after each epoch's checkpoint (main process only), for a task's own outputs


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    dataset_types: tuple[str, ...]  # raw dataset layouts it learns from (dataset.json "task")
    fingerprint: Callable[..., Any]  # (description, workers, progress) -> object with .save(path)
    plan: Callable[..., Any]  # (fingerprint_file, description, PlanRequest) -> Plans
    preprocess: Callable[..., tuple[int, int]]  # (description, plans, configuration, folder, workers, progress) -> (new, kept)
    preprocessed_cases: Callable[..., list[str]]  # (data_folder, plans, configuration) -> case ids ready to train on
    start_run: Callable[[RunContext], TrainingRun]
    model_info: Callable[..., dict]  # (configuration) -> task entries of model.json (ModelInfo fields)
    predict: Callable[..., Any]  # (ModelFolder, PredictRequest) -> medseg.inference.batch.BatchResult
    crossval: Callable[..., dict]  # (ModelFolder, folds) -> pooled cross-validation report
    report_rows: Callable[[dict], tuple[list[str], list[list[str]]]]  # report -> table header and rows
    report_score: Callable[[dict], float]  # a report's headline number (higher is better): picks the best configuration
    # optional: (description, case_ids) -> (group per case, stratum per case) for cross-validation folds
    # (a group, e.g. a patient, never in two folds; strata spread evenly); None: plain shuffled folds
    split_keys: Callable[..., tuple[dict, dict]] | None = None


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    return TASKS.get(name)


def list_tasks() -> list[Task]:
    return sorted(TASKS.values(), key=lambda task: task.name)


def task_for_model(model: str, dataset_type: str | None = None, dataset: str = "the dataset") -> Task:
    """The task that trains a model family, checked against the dataset's layout."""
    from medseg.models.registry import get_model_family

    family = get_model_family(model)
    task = get_task(family.task_type)
    if dataset_type is not None and dataset_type not in task.dataset_types:
        raise MedsegError(
            f"model '{model}' is trained by the {task.name} task, which learns from {' or '.join(task.dataset_types)} datasets; "
            f"{dataset} is a {dataset_type} dataset"
        )
    return task


def task_for_dataset(dataset_type: str, dataset: str = "the dataset") -> Task:
    """The task made for this layout (the first whose main layout, ``dataset_types[0]``, it is), else
    the first that learns from it: for stages run before a model is chosen (fingerprint)."""
    tasks = list(TASKS.values())
    for task in [t for t in tasks if t.dataset_types[0] == dataset_type] + tasks:
        if dataset_type in task.dataset_types:
            return task
    raise MedsegError(f"{dataset} is a {dataset_type} dataset; no registered task learns from it yet (tasks: {', '.join(TASKS.names())})")
