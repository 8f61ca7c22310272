"""An example medseg plug-in: a task and a model family that live outside medseg.

The task, ``toy_regression``, learns one number per image from a segmentation dataset: the
fraction of the image covered by foreground labels. The family, ``toy_regressor``, is a small
convolutional network with global average pooling. Neither touches a medseg file: importing this
module registers both, and medseg's own CLI, pipeline and training loop (time budget, checkpoints,
``--continue``, DDP) run them.

Use it with ``MEDSEG_PLUGINS=toy_regression`` (the module on PYTHONPATH), ``medseg --plugin
toy_regression ...``, or from an installed package through the ``medseg.plugins`` entry-point group:

    medseg --plugin toy_regression plan-and-train --dataset AbdomenMRI --demo --model toy_regressor

It is the template for a lab's own task: a ``Task`` of stage functions, a training-run class with
the methods of ``medseg.tasks.TrainingRun`` and a predictor with those of ``medseg.tasks.TaskPredictor``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.atomic import atomic_path, write_json_atomic
from medseg.errors import MedsegError
from medseg.models import ModelFamily, register_model
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.tasks import BatchRequest, PlanRequest, PredictorOptions, RunContext, Task, get_task, register_task

TASK = "toy_regression"
INPUT_SIZE = {2: [32, 32], 3: [8, 24, 24]}  # every image is resized to this


# ------------------------------------------------------------------------------------------- model
class ToyRegressor(nn.Module):
    def __init__(self, in_channels: int, ndim: int, width: int = 8):
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        self.features = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.ReLU(), conv(width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *S) -> (B,) predicted foreground fraction."""
        pooled = self.features(x).flatten(2).mean(2)
        return self.head(pooled)[:, 0]


def build_toy_regressor(in_channels: int, num_classes: int, deep_supervision: bool = False, ndim: int = 2, width: int = 8) -> ToyRegressor:
    return ToyRegressor(in_channels, ndim, width)


register_model(ModelFamily(name="toy_regressor", build=build_toy_regressor, task_type=TASK, dims=(2, 3), summary="example plug-in: conv net regressing the foreground fraction"))


# ---------------------------------------------------------------------------------- data and plan
def plan(fingerprint_file: Path, description, request: PlanRequest) -> Plans:
    from medseg.planning.fingerprint import Fingerprint

    fingerprint = Fingerprint.load(fingerprint_file)
    ndim = fingerprint.ndim
    name = "2d" if ndim == 2 else "3d"
    configuration = ConfigurationPlan(
        name=name, ndim=ndim, spacing=[float(s) for s in np.median(fingerprint.spacings, axis=0)],
        median_shape=[int(s) for s in np.median(fingerprint.shapes_before_crop, axis=0)], patch_size=INPUT_SIZE[ndim], batch_size=4,
        batch_dice=False, normalization=[{"scheme": "zscore", "use_mask": False, "properties": {}}] * len(fingerprint.channel_names),
        architecture={"name": request.model, "kwargs": {"ndim": ndim, "width": 8}}, resampling={}, data_identifier=f"{request.plans_name}_{name}",
    )
    return Plans(
        dataset_name=fingerprint.dataset_name, plans_name=request.plans_name, planner={"mode": "fixed", "model": request.model},
        transpose_forward=list(range(ndim)), transpose_backward=list(range(ndim)), original_median_spacing=configuration.spacing,
        original_median_shape=configuration.median_shape, labels=description.labels, channel_names=list(fingerprint.channel_names),
        foreground_intensity_properties_per_channel={}, configurations={name: configuration},
    )


def prepare_image(array: np.ndarray, size: list[int]) -> np.ndarray:
    """array: (C, *S) -> (C, *size) float32, z-scored per channel."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    resized = F.interpolate(tensor, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)[0]
    mean, std = resized.flatten(1).mean(1), resized.flatten(1).std(1).clamp_min(1e-6)
    shape = (-1,) + (1,) * len(size)
    return ((resized - mean.view(shape)) / std.view(shape)).numpy()


def preprocess(description, plans, configuration, folder: Path, workers, progress) -> tuple[int, int]:
    from medseg.data.cases import load_case_images, load_case_label
    from medseg.data.layout import list_cases

    folder.mkdir(parents=True, exist_ok=True)
    cases, _ = list_cases(description)
    new = 0
    for index, case in enumerate(cases):
        target = folder / f"{case.case_id}.npz"
        if not target.is_file():
            image = load_case_images(case)
            fraction = float((load_case_label(case, image).array > 0).mean())
            with atomic_path(target) as temporary:
                with open(temporary, "wb") as handle:
                    np.savez(handle, image=prepare_image(image.array, configuration.patch_size), target=np.float32(fraction))
            new += 1
        if progress:
            progress(index + 1, len(cases))
    return new, len(cases) - new


def preprocessed_cases(data_folder: Path, plans, configuration) -> list[str]:
    return sorted(p.stem for p in data_folder.glob("*.npz") if not p.name.startswith(".")) if data_folder.is_dir() else []  # skip temporaries


def load_case(folder: Path, case_id: str) -> tuple[np.ndarray, float]:
    with np.load(folder / f"{case_id}.npz") as content:
        return content["image"], float(content["target"])


# ------------------------------------------------------------------------------------ training run
class ToyRegressionRun:
    score_name = "neg_rmse"

    def __init__(self, context: RunContext):
        from medseg.models import build_model

        self.context = context
        self.network = build_model(context.configuration.architecture, len(context.plans.channel_names), 1)
        self.modules = {"network": self.network}
        self.learning_rate = context.options.learning_rate or 1e-2
        self.optimizers = {"network": torch.optim.Adam(self.network.parameters(), self.learning_rate)}
        self.batch_size = context.options.batch_size or context.configuration.batch_size

    def describe(self) -> str:
        return f"training {TASK} ({self.context.configuration.architecture['name']}), batch {self.batch_size}, adam lr {self.learning_rate:g}"

    def batches(self, split: str, seed: int, background: bool):
        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        data = [load_case(self.context.data_folder, case_id) for case_id in cases]
        rng = np.random.default_rng(seed)
        while True:
            chosen = [data[i] for i in rng.integers(len(data), size=self.batch_size)]
            yield torch.from_numpy(np.stack([c[0] for c in chosen])), torch.tensor([c[1] for c in chosen], dtype=torch.float32)

    @staticmethod
    def schedule(progress: float) -> float:
        """Linear decay of the learning rate to 0 (the loop applies it)."""
        return 1 - progress

    def batch_loss(self, batch, models) -> torch.Tensor:
        """The loss of a batch; medseg's loop does zero-grad, backward and the optimizer step."""
        images, targets = (t.to(self.context.device) for t in batch)
        return F.mse_loss(models["network"](images), targets)

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        images, targets = (t.to(self.context.device) for t in batch)
        squared = (models["network"](images) - targets) ** 2
        return float(squared.mean().item()), np.array([float(squared.sum().item()), float(len(targets))])

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        rmse = float(np.sqrt(totals[0] / max(totals[1], 1.0)))
        return -rmse, {"rmse": round(rmse, 5)}

    def final_validation(self) -> dict:
        context = self.context
        self.network.eval()
        rows = {}
        with torch.no_grad():
            for case_id in context.val_cases:
                image, target = load_case(context.data_folder, case_id)
                predicted = float(self.network(torch.from_numpy(image)[None].to(context.device))[0])
                rows[case_id] = {"predicted": predicted, "target": target}
        report = summarize(rows)
        (context.fold_folder / "validation").mkdir(parents=True, exist_ok=True)
        write_json_atomic(context.fold_folder / "validation" / "summary.json", report)
        return report


def summarize(rows: dict[str, dict]) -> dict:
    errors = [row["predicted"] - row["target"] for row in rows.values()]
    return {"num_cases": len(rows), "rmse": float(np.sqrt(np.mean(np.square(errors)))) if errors else None, "per_case": rows}


# --------------------------------------------------------------------------------- predict, report
class ToyPredictor:
    """The task's predictor (medseg.tasks.TaskPredictor): every surface opens it through
    ``medseg.tasks.open_predictor`` and calls ``predict_image`` or ``predict_batch``."""

    precision = "float32"

    def __init__(self, model_folder, networks: list, folds: list[str]):
        self.model_folder, self.networks, self.folds = model_folder, [n.eval() for n in networks], folds

    @torch.no_grad()
    def predict_image(self, image, probabilities: bool = False, case_id: str = "case") -> float:
        prepared = torch.from_numpy(prepare_image(image.array, self.model_folder.configuration.patch_size))[None]
        return float(np.mean([float(n(prepared)[0]) for n in self.networks]))

    def predict_batch(self, request: BatchRequest):
        from medseg.inference.batch import BatchResult, read_case
        from medseg.inference.inputs import discover

        result = BatchResult(folds=list(self.folds))
        rows = []
        for case in discover(request.source, request.series, confine=request.confine).cases:
            try:
                rows.append({"case": case.case_id, "foreground_fraction": self.predict_image(read_case(case), case_id=case.case_id)})
            except MedsegError as error:
                result.failed[case.case_id] = str(error)
        request.output.mkdir(parents=True, exist_ok=True)
        target = request.output / "predictions.csv"
        with atomic_path(target) as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["case", "foreground_fraction"])
                writer.writeheader()
                writer.writerows(rows)
        result.written.append(target)
        return result


def load_predictor(folder, options: PredictorOptions) -> ToyPredictor:
    from medseg.models import build_model

    folds = options.folds or folder.folds()
    networks = []
    for fold in folds:
        network = build_model(folder.configuration.architecture, len(folder.plans.channel_names), 1)
        network.load_state_dict(folder.load_module_states(fold, options.checkpoint)["network"])
        networks.append(network)
    return ToyPredictor(folder, networks, list(folds))


def crossval(folder, folds) -> dict:
    rows = {}
    for fold in folds:
        summary = folder.fold_folder(fold) / "validation" / "summary.json"
        if not summary.is_file():
            raise MedsegError(f"{summary}: fold {fold} has no finished validation")
        rows.update(json.loads(summary.read_text())["per_case"])
    report = {**summarize(rows), "folds": list(folds)}
    write_json_atomic(folder.crossval_summary_path(), report)
    return report


segmentation = get_task("segmentation")
register_task(
    Task(
        name=TASK,
        summary="example plug-in: regress the foreground fraction of an image",
        dataset_types=("segmentation",),
        fingerprint=segmentation.fingerprint,  # a plug-in may reuse a built-in task's stages
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=preprocessed_cases,
        start_run=ToyRegressionRun,
        model_info=lambda configuration: {},
        predictor=load_predictor,
        capabilities=frozenset({"crossval"}),  # what surfaces may ask of it (medseg.tasks.prediction.CAPABILITIES)
        crossval=crossval,
        report_rows=lambda report: (["metric", "value"], [["RMSE", f"{report['rmse']:.4f}"]]),
        report_score=lambda report: -report["rmse"],
    )
)
