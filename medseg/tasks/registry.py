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
from medseg.tasks.capabilities import CAPABILITIES, CROSSVAL


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
    precision: str = "float32"  # the training forward's precision (medseg.precision): a CPU plan times its steps in it


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
    description: Any = None  # medseg.data.layout.DatasetDescription: dataset.json as the run's experiment parsed it


class TrainingRun(Protocol):
    """What the trainer's loop asks of a task during one run."""

    modules: dict[str, torch.nn.Module]  # saved in checkpoints; those with trainable parameters are wrapped in DDP
    optimizers: dict[str, torch.optim.Optimizer]  # saved in checkpoints and restored by --continue
    score_name: str  # the validation score (higher is better) whose moving average picks checkpoint_best
    learning_rate: float  # each optimizer group's rate is learning_rate x group["lr_scale"] (default 1) x schedule(progress)
    schedule: Callable[[float], float]  # progress in [0, 1] of the planned iterations -> rate factor (medseg.training.schedules)
    # optional: score_label, how the epoch line prints it (default: score_name)
    # optional: gradient_clip, the max gradient norm over the optimizers' parameters (None: no clipping)
    # optional: train_step(batch, models) -> float, a task's own whole step (zero-grad, passes, steps)
    # optional: mixed_precision = True when its forward may run under bf16 autocast (--precision
    #   bfloat16/auto) because its losses are computed in float32; else the run stays in float32
    #   and says why (float32_reason)
    #           instead of the loop's, e.g. HAG's gradient routing; None or absent: the loop's step

    def describe(self) -> str:
        """One log line: what is trained, with which batch and optimizers."""

    def batches(self, split: str, seed: int, background: bool) -> Iterator:
        """Endless batches of ``split`` ("train" or "val")."""

    def batch_loss(self, batch, models: dict[str, torch.nn.Module]) -> torch.Tensor:
        """The loss of one training batch (a scalar with its graph). The loop does the rest of the
        step: zero-grad, backward, clipping (``gradient_clip``), every optimizer's step.
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
    # (description, workers, progress, analyses) -> object with .save(path); analyses: case id -> what the
    # dataset check's pass found (medseg.data.check), for a task that can build on it, else None
    fingerprint: Callable[..., Any]
    plan: Callable[..., Any]  # (fingerprint_file, description, PlanRequest) -> Plans
    preprocess: Callable[..., tuple[int, int]]  # (description, plans, configuration, folder, workers, progress) -> (new, kept)
    preprocessed_cases: Callable[..., list[str]]  # (data_folder, plans, configuration) -> case ids ready to train on
    start_run: Callable[[RunContext], TrainingRun]
    model_info: Callable[..., dict]  # (configuration) -> task entries of model.json (ModelInfo fields)
    # (ModelFolder, medseg.tasks.prediction.PredictorOptions) -> TaskPredictor; None: its models do not predict
    predictor: Callable[..., Any] | None
    # what surfaces may ask of it (medseg.tasks.prediction.CAPABILITIES); a surface never tests a task's name
    capabilities: frozenset[str]
    report_rows: Callable[[dict], tuple[list[str], list[list[str]]]]  # report -> table header and rows
    report_score: Callable[[dict], float]  # a report's headline number (higher is better): picks the best configuration
    crossval: Callable[..., dict] | None = None  # (ModelFolder, folds) -> pooled cross-validation report (capability "crossval")
    # optional: (description, case_ids) -> (group per case, stratum per case) for cross-validation folds
    # (a group, e.g. a patient, never in two folds; strata spread evenly); None: plain shuffled folds
    split_keys: Callable[..., tuple[dict, dict]] | None = None
    instead: Callable[[Path], str] | None = None  # (model folder) -> what to do with such a model instead of predicting
    # optional: (dataset results folder, cross-validated ModelFolders, log) -> the choice written to
    # best_configuration.json, ensembles of the folders included; None: the best report_score wins
    find_best: Callable[..., dict] | None = None
    keeps_probabilities: bool = False  # its final validation can keep out-of-fold probabilities (for find_best's ensembles)
    # optional: (ModelFolder, log) -> the expected-quality calibration fitted on its cross-validation
    # (medseg.audit.calibration), None when the folder was not cross-validated; None: its models have none
    calibrate: Callable[..., dict | None] | None = None
    # optional: (ModelFolder, checkpoint) -> medseg.inference.onnx_export.ExportGraph, what each fold
    # exports to ONNX when it is not the plan's network alone (GMS: encoder, mapper and decoder)
    onnx_graph: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.capabilities) - set(CAPABILITIES))
        if unknown:
            raise MedsegError(f"task '{self.name}': unknown capabilities {unknown} (known: {', '.join(CAPABILITIES)})")
        if (CROSSVAL in self.capabilities) != (self.crossval is not None):
            raise MedsegError(f"task '{self.name}': declares '{CROSSVAL}' exactly when it gives a crossval function")


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
