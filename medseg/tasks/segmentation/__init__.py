"""The segmentation task: label maps from images, 2D and 3D, nnU-Net style.

Planning from the dataset fingerprint, patch batches with foreground oversampling and
augmentation, deep-supervised Dice + CE, SGD-Nesterov or AdamW under a poly learning-rate decay,
pseudo-Dice on validation patches as the score that picks "best", sliding-window prediction in the
original geometry, Dice/NSD/HD95 cross-validation with largest-component postprocessing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.tasks.capabilities import CROSSVAL, LABEL_MAPS, ONNX, OPENVINO, PATCH_PLANNING, RAY
from medseg.tasks.registry import PlanRequest, RunContext, Task, register_task
from medseg.training.optimizers import DEFAULT_LR, make_optimizer
from medseg.training.schedules import poly

GRADIENT_CLIP = 12.0


class SegmentationRun:
    score_name, score_label = "pseudo_dice", "pseudo-Dice"
    gradient_clip = GRADIENT_CLIP
    schedule = staticmethod(poly)  # nnU-Net's polynomial decay
    mixed_precision = True  # bf16 forward: Dice + CE computed in float32; the sequence kernels keep their own precision

    def __init__(self, context: RunContext):
        from medseg.models.registry import build_model
        from medseg.tasks.segmentation.training.augmentation import augmentation_for
        from medseg.tasks.segmentation.training.losses import (
            DeepSupervisionLoss, DiceCELoss, RegionDiceBCELoss, deep_supervision_scales, deep_supervision_weights,
        )

        self.context = context
        plans, configuration, options = context.plans, context.configuration, context.options
        self.num_classes = plans.num_classes
        self.network = build_model(configuration.architecture, plans.input_channels(configuration), self.num_classes, deep_supervision=True)
        self.modules = {"network": self.network}
        self.scales = deep_supervision_scales(configuration.architecture["kwargs"]["strides"])
        self.regions = list(plans.regions.values()) if plans.regions else None
        self.ignore_label = plans.ignore_label
        if self.regions:
            loss = RegionDiceBCELoss(self.regions, configuration.batch_dice, ignore_label=self.ignore_label)
        else:
            loss = DiceCELoss(configuration.batch_dice, ignore_label=self.ignore_label)
        self.loss = DeepSupervisionLoss(loss, deep_supervision_weights(len(self.scales)))
        optimizer = options.optimizer or configuration.training.get("optimizer", "sgd")
        planned_rate = configuration.training.get("learning_rate") if optimizer == configuration.training.get("optimizer") else None
        self.learning_rate = options.learning_rate or planned_rate or DEFAULT_LR[optimizer]
        self.optimizer_name = optimizer
        self.optimizers = {"network": make_optimizer(optimizer, self.network.parameters(), self.learning_rate)}
        total_batch = options.batch_size or configuration.batch_size
        self.total_batch = total_batch
        self.batch_size = max(1, total_batch // context.world_size)
        self.augmentation = augmentation_for(configuration)

    def describe(self) -> str:
        c = self.context.configuration
        return (
            f"training {c.name} ({c.architecture['name']}), patch {c.patch_size}, batch {self.batch_size * self.context.world_size}, "
            f"{self.optimizer_name} lr {self.learning_rate:g}"
        )

    def batches(self, split: str, seed: int, background: bool) -> Iterator:
        from medseg.tasks.segmentation.training.loader import PatchSampler, batch_stream

        context = self.context
        cases = context.train_cases if split == "train" else (context.val_cases or context.train_cases)
        sampler = PatchSampler(
            context.data_folder, cases, patch_size=context.configuration.patch_size, batch_size=self.batch_size,
            augmentation=self.augmentation if split == "train" else None, deep_supervision_scales=self.scales, seed=seed,
            previous_stage_classes=context.plans.label_map_size if context.configuration.previous_stage else 0,
        )
        return batch_stream(sampler, seed, background)

    def _to_device(self, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        data, targets = batch
        device = self.context.device
        return data.to(device, non_blocking=True), [t.to(device, non_blocking=True) for t in targets]

    def batch_loss(self, batch, models) -> torch.Tensor:
        """Deep-supervised Dice + CE of one training batch (the loop does the step)."""
        data, targets = self._to_device(batch)
        return self.loss(models["network"](data), targets)

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        """-> loss and (3, K-1) true positive, false positive, false negative voxel counts per class."""
        data, targets = self._to_device(batch)
        outputs = models["network"](data)
        loss = float(self.loss(outputs, targets).item())
        reference = targets[0][:, 0]
        annotated = reference != self.ignore_label if self.ignore_label is not None else torch.ones_like(reference, dtype=torch.bool)
        if self.regions:  # one sigmoid per region, each scored against the voxels its values cover
            from medseg.tasks.segmentation.training.losses import region_targets

            predicted, expected = outputs[0] > 0, region_targets(reference, self.regions) > 0
            pairs = [(predicted[:, r], expected[:, r]) for r in range(len(self.regions))]
        else:
            prediction = outputs[0].argmax(1)
            pairs = [(prediction == value, reference == value) for value in range(1, self.num_classes)]
        counts = np.zeros((3, len(pairs)))
        for index, (p, r) in enumerate(pairs):
            p, r = p & annotated, r & annotated
            counts[:, index] = [(p & r).sum().item(), (p & ~r).sum().item(), (~p & r).sum().item()]
        return loss, counts

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        """Pseudo-Dice: Dice per class over all validation patches pooled, then the mean over classes."""
        tp, fp, fn = totals
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        pseudo_dice = float(np.nanmean(per_class)) if np.any(~np.isnan(per_class)) else 0.0
        return pseudo_dice, {"pseudo_dice": [None if np.isnan(v) else round(float(v), 4) for v in per_class]}

    def final_validation(self) -> dict:
        """Sliding-window prediction of the held-out cases from their raw images, then metrics."""
        from medseg.tasks.segmentation.training.validation import validate_fold

        context = self.context
        return validate_fold(
            context.model_folder, context.fold_folder, [self.network], context.device, context.val_cases, context.options.mirror_tta, context.log,
            save_probabilities=context.options.save_probabilities,
        )


# ------------------------------------------------------------------------------------- stage hooks
def fingerprint(description, workers, progress, analyses=None):
    from medseg.tasks.segmentation.planning.fingerprint import extract_fingerprint

    return extract_fingerprint(description, workers, progress, analyses)


def plan(fingerprint_file, description, request: PlanRequest):
    from medseg.planning.device import default_budget
    from medseg.planning.fingerprint import Fingerprint
    from medseg.tasks.segmentation.planning.planner import plan_experiment

    if (request.settings or {}).get("input_size"):
        raise MedsegError(f"--input-size is for the 2D image tasks (classifiers, pretraining, GMS); {request.model} plans its own patch size")
    fingerprint = Fingerprint.load(fingerprint_file)
    budget = default_budget(
        request.model, request.memory_gb, request.step_seconds, training_seconds=request.training_seconds, preset=request.preset,
        throughput_cache=Path(fingerprint_file).parent / "cpu_throughput.json", precision=request.precision,
    )
    return plan_experiment(fingerprint, description, budget, request.model, request.plans_name, preset=request.preset, model_options=request.model_options)


def preprocess(description, plans, configuration, folder, workers, progress):
    from medseg.data.layout import list_cases
    from medseg.paths import configuration_model_folder, cropped_cases_folder
    from medseg.tasks.segmentation.cascade import previous_stage_folder, require_out_of_fold_predictions
    from medseg.tasks.segmentation.preprocessing.dataset import preprocess_dataset

    previous = None
    if configuration.previous_stage:
        stage_folder = previous_stage_folder(configuration_model_folder(description.folder, plans, configuration.name), configuration)
        case_ids = [case.case_id for case in list_cases(description, "Tr")[0]]
        previous = require_out_of_fold_predictions(stage_folder, description.file_ending, case_ids, configuration.previous_stage)
    return preprocess_dataset(
        description, plans, configuration, folder, workers, progress, cropped_folder=cropped_cases_folder(description.folder), previous_stage=previous,
    )


def preprocessed_cases(data_folder, plans, configuration) -> list[str]:
    from medseg.tasks.segmentation.preprocessing.dataset import check_signature, preprocessed_case_ids

    case_ids = preprocessed_case_ids(data_folder) if data_folder.is_dir() else []
    if case_ids:
        check_signature(data_folder, plans, configuration)
    return case_ids


def model_info(configuration) -> dict:
    from medseg.tasks.segmentation.training.augmentation import augmentation_for

    return {"mirror_axes": list(augmentation_for(configuration).mirror_axes)}


def load_predictor(folder, options):
    from medseg.ensemble_folder import EnsembleModelFolder
    from medseg.monai_bundle_folder import MonaiBundleFolder
    from medseg.tasks.segmentation.inference.predictor import load_predictor as load
    from medseg.totalsegmentator_folder import TotalSegmentatorFolder

    if isinstance(folder, TotalSegmentatorFolder):
        from medseg.tasks.segmentation.inference.totalseg_predictor import load_totalseg_predictor

        return load_totalseg_predictor(folder, options)
    if isinstance(folder, MonaiBundleFolder):
        from medseg.tasks.segmentation.inference.bundle_predictor import load_bundle_predictor

        return load_bundle_predictor(folder, options)
    if isinstance(folder, EnsembleModelFolder):
        from medseg.tasks.segmentation.inference.ensemble_predictor import load_ensemble_predictor

        return load_ensemble_predictor(folder, options, load)
    return load(folder, options)


def find_best(results, folders, log) -> dict:
    from medseg.tasks.segmentation.evaluation.best_configuration import find_best_configuration

    return find_best_configuration(results, folders, log)


def crossval(folder, folds) -> dict:
    from medseg.tasks.segmentation.evaluation.crossval import collect_crossval

    return collect_crossval(folder, folds)


def calibrate(folder, log) -> dict | None:
    """`medseg calibrate`: medseg's folders from their cross-validation, nnU-Net's from their own validation."""
    from medseg.tasks.segmentation.evaluation.crossval import recalibrate
    from medseg.tasks.segmentation.evaluation.nnunet_calibration import calibrate_nnunet_folder

    if folder.info.extra.get("source") == "nnunetv2":
        return calibrate_nnunet_folder(folder, log)
    if folder.info.extra.get("source") == "monai_bundle":
        log(f"no calibration: {folder.path} is a MONAI bundle (no cross-validation medseg can read); predict runs without an expected Dice")
        return None
    calibration = recalibrate(folder, log)
    if calibration is None:
        log(f"no calibration: {folder.path} was not cross-validated (plan-and-train writes crossval_summary.json)")
    return calibration


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}" if value <= 1.0 else f"{value:.2f}"


def report_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    rows = [[cls, *(_number(metrics[m]) for m in ("dice", "nsd", "hd95"))] for cls, metrics in report["mean"].items()]
    fg = report["foreground_mean"]
    rows.append(["[bold]foreground mean[/bold]", *(_number(fg[m]) for m in ("dice", "nsd", "hd95"))])
    if "postprocessed" in report:
        post = report["postprocessed"]["foreground_mean"]
        rows.append(["after postprocessing", *(_number(post[m]) for m in ("dice", "nsd", "hd95"))])
    return ["class", "Dice", "NSD", "HD95 (mm)"], rows


def report_score(report: dict) -> float:
    """Cross-validation foreground Dice (after postprocessing, when it was applied)."""
    chosen = report.get("postprocessed", report)
    return chosen["foreground_mean"]["dice"] or 0.0


register_task(
    Task(
        name="segmentation",
        summary="label maps (2D/3D): patch training with deep supervision, sliding-window prediction, Dice/NSD/HD95",
        dataset_types=("segmentation",),
        fingerprint=fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=preprocessed_cases,
        start_run=SegmentationRun,
        model_info=model_info,
        predictor=load_predictor,
        capabilities=frozenset({LABEL_MAPS, CROSSVAL, ONNX, OPENVINO, RAY, PATCH_PLANNING}),
        crossval=crossval,
        report_rows=report_rows,
        report_score=report_score,
        find_best=find_best,
        keeps_probabilities=True,
        calibrate=calibrate,
    )
)
