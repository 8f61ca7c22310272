"""One classification training run: folds that keep a patient together, targets from the labels
table, AdamW with warm-up and cosine decay (layer-wise decay for ViTs), BCE or CE, gradient routing
for HAG, and mean ROC AUC from additive score histograms as the validation score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.atomic import write_json_atomic
from medseg.errors import DatasetError, MedsegError
from medseg.preprocessing.images2d import load_images
from medseg.tasks.classification.predictions_csv import PREDICTIONS_CSV, TTA_PREDICTIONS_CSV, _text, write_predictions_csv
from medseg.tasks.registry import RunContext
from medseg.training.optimizers import ADAMW_GRADIENT_CLIP, parameter_groups
from medseg.training.schedules import warmup_then_cosine


TASK = "classification"


SCORE_BINS = 200  # validation score histograms (additive across steps and processes)


GROUP_COLUMNS = ("group", "patient", "patient_id", "patientid")


GRADIENT_CLIP = ADAMW_GRADIENT_CLIP


WARMUP_FRACTION = 0.05


def labels_table(description):
    from medseg.data.classification import read_labels_table

    table, problems = read_labels_table(description, "Tr")
    if table is None or problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    return table


def split_keys(description, case_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(group per case from a group/patient column, stratum per case: its class, or its rarest positive class)."""
    table = labels_table(description)
    groups = groups_from_table(table, case_ids)
    classes = description.classes
    if description.multi_label:
        counts = np.sum([table.targets[c] for c in case_ids if c in table.targets], axis=0)
        strata = {}
        for case in case_ids:
            positive = [k for k, value in enumerate(table.targets.get(case, [])) if value]
            strata[case] = classes[min(positive, key=lambda k: counts[k])] if positive else "none"
    else:
        strata = {case: classes[table.targets[case]] for case in case_ids if case in table.targets}
    return groups, strata


def groups_from_table(table, case_ids) -> dict[str, str]:
    """case -> patient, from a labels table's group/patient column (cases without one are left out)."""
    groups = {}
    for case in case_ids:
        extra = {k.lower(): v for k, v in table.extra.get(case, {}).items()}
        group = next((extra[c].strip() for c in GROUP_COLUMNS if (extra.get(c) or "").strip()), "")
        if group:
            groups[case] = group
    return groups


def classes_of(plans) -> list[str]:
    """The class names in output order (plans store them as name -> output index)."""
    return sorted(plans.labels, key=plans.labels.get)


def targets_of(table, case_ids: list[str]) -> np.ndarray:
    """(N, K) 0/1 for multi-label, (N,) class indices for multi-class, from a LabelsTable."""
    missing = [c for c in case_ids if c not in table.targets]
    if missing:
        raise DatasetError(f"{table.path}: no row for case(s) {', '.join(missing[:5])}")
    return np.array([table.targets[c] for c in case_ids])


def histogram_auc(histograms: np.ndarray) -> list[float | None]:
    """histograms: (K, 2, BINS) negative/positive counts of the probability per class -> AUC per class."""
    aucs = []
    for negatives, positives in histograms:
        n_neg, n_pos = negatives.sum(), positives.sum()
        if n_neg == 0 or n_pos == 0:
            aucs.append(None)
            continue
        above = np.cumsum(positives[::-1])[::-1] - positives  # positives in higher bins
        aucs.append(float((negatives * (above + 0.5 * positives)).sum() / (n_neg * n_pos)))
    return aucs


class ClassificationRun:
    score_name, score_label = "mean_auc", "mean AUC"

    def __init__(self, context: RunContext):
        from medseg.data.layout import load_dataset_description
        from medseg.models.registry import build_model

        self.context = context
        plans, configuration, options = context.plans, context.configuration, context.options
        self.training = configuration.training
        self.multi_label = bool(self.training["multi_label"])
        self.classes = classes_of(plans)
        self.network = build_model(configuration.architecture, len(plans.channel_names), len(self.classes))
        self.modules = {"network": self.network}
        if options.optimizer not in (None, "adamw"):
            raise MedsegError(f"the {TASK} task trains with adamw (got --optimizer {options.optimizer})")
        self.learning_rate = options.learning_rate or self.training["learning_rate"]
        layer_decay = self.training.get("layer_decay", 1.0)
        self.pretrained = getattr(options, "pretrained", None)
        if self.pretrained:
            from medseg.models.mae import load_encoder

            if not hasattr(self.network, "layer_id"):
                raise MedsegError(f"--pretrained loads a ViT encoder; {configuration.architecture['name']} is not a ViT")
            load_encoder(self.network, Path(self.pretrained), len(plans.channel_names), configuration.architecture["kwargs"])
            layer_decay = self.training.get("pretrained_layer_decay", 0.75)  # keep the pretrained early layers close to where they were
        self.layer_decay = layer_decay
        from medseg.models.vit import is_gate_parameter

        gates = {name: p for name, p in self.network.named_parameters() if is_gate_parameter(name)}
        self.routing = bool(gates) and bool(self.training.get("gradient_routing", True))
        groups = parameter_groups(self.network, self.training["weight_decay"], layer_decay, set(gates) if self.routing else set())
        self.optimizers = {"network": torch.optim.AdamW(groups, self.learning_rate)}
        if self.routing:
            self.optimizers["gates"] = torch.optim.AdamW([{"params": list(gates.values()), "lr_scale": 1.0}], self.learning_rate, weight_decay=0.0)
        self.gate_gradients_reach_main = bool(self.training.get("gate_gradients_reach_main", True))
        self.train_step = self._routed_train_step if self.routing else None  # two passes, two optimizers: its own step
        self.schedule = warmup_then_cosine(self.training.get("warmup_fraction", WARMUP_FRACTION))
        self.gradient_clip = GRADIENT_CLIP
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        description = context.description or load_dataset_description(context.model_folder.raw_folder)
        self.table = labels_table(description)  # read once per run
        self.targets = {
            split: torch.as_tensor(targets_of(self.table, cases), dtype=torch.float32 if self.multi_label else torch.long)
            for split, cases in (("train", context.train_cases), ("val", context.val_cases or context.train_cases))
        }
        weights = self.training.get("class_weights")
        if weights == "balanced" and not self.multi_label:
            counts = np.bincount(self.targets["train"].numpy(), minlength=len(self.classes)).astype(float)
            weights = (counts.sum() / np.maximum(counts, 1) / len(self.classes)).tolist()
        self.class_weights = torch.tensor(weights, dtype=torch.float32) if isinstance(weights, list) else None

    def describe(self) -> str:
        c = self.context.configuration
        loss = "BCE" if self.multi_label else "CE" + (" (class-weighted)" if self.class_weights is not None else "")
        return (
            f"training {TASK} ({c.architecture['name']}), input {c.patch_size}, batch {self.batch_size * self.context.world_size}, "
            f"{len(self.classes)} classes, {loss}, adamw lr {self.learning_rate:g}"
            + (f", from {self.pretrained} (layer decay {self.layer_decay:g})" if self.pretrained else "")
            + (f", gradient routing (first-pass gradients reach the main step: {'yes' if self.gate_gradients_reach_main else 'no'})" if self.routing else "")
        )

    @property
    def mixed_precision(self) -> bool:
        """bf16 forward for the ViTs and CNNs (losses in float32); HAG's gradient routing stays float32."""
        return not self.routing

    float32_reason = "gradient routing (HAG) has not been measured in bf16"

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # a bf16 forward's logits: BCE/CE in float32
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets)
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, targets, weight=weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def batches(self, split: str, seed: int, background: bool):
        from medseg.training.image_augmentation import augment_batch

        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        images, targets = load_images(self.context.data_folder, cases), self.targets[split]
        generator = torch.Generator().manual_seed(seed)
        augmentation = self.context.configuration.augmentation
        while True:
            chosen = torch.randint(len(cases), (self.batch_size,), generator=generator)
            batch = images[chosen].float()
            if split == "train":
                batch = augment_batch(batch, augmentation, generator)
            yield batch, targets[chosen]

    def batch_loss(self, batch, models) -> torch.Tensor:
        images, targets = (t.to(self.context.device, non_blocking=True) for t in batch)
        return self.loss(models["network"](images), targets)

    def _routed_train_step(self, batch, models) -> float:
        images, targets = (t.to(self.context.device, non_blocking=True) for t in batch)
        return self._routed_step(images, targets, models["network"])

    def _routed_step(self, images: torch.Tensor, targets: torch.Tensor, network: torch.nn.Module) -> float:
        """Gradient routing (HAG): pass 1 updates only the gates; pass 2, through the updated gates,
        updates every other parameter. With ``gate_gradients_reach_main`` (the published behaviour)
        the main step uses pass 1's gradients plus pass 2's; without it, pass 2's alone."""
        main, gates = self.optimizers["network"], self.optimizers["gates"]
        main.zero_grad(set_to_none=True)
        gates.zero_grad(set_to_none=True)
        first = self.loss(network(images), targets)
        if not torch.isfinite(first):
            return float(first.item())
        first.backward()
        gates.step()
        if not self.gate_gradients_reach_main:
            main.zero_grad(set_to_none=True)
        gates.zero_grad(set_to_none=True)  # pass 2 does not move the gates
        second = self.loss(network(images), targets)
        if not torch.isfinite(second):
            return float(second.item())
        second.backward()
        torch.nn.utils.clip_grad_norm_([p for group in main.param_groups for p in group["params"]], GRADIENT_CLIP)
        main.step()
        return float(second.item())

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        """-> loss and (K, 2, BINS) histograms of each class's probability over negatives and positives."""
        images, targets = (t.to(self.context.device) for t in batch)
        logits = models["network"](images)
        probabilities = self.probabilities(logits).float().cpu().numpy()
        onehot = targets.cpu().numpy().astype(bool) if self.multi_label else np.eye(len(self.classes), dtype=bool)[targets.cpu().numpy()]
        bins = np.minimum((probabilities * SCORE_BINS).astype(int), SCORE_BINS - 1)
        histograms = np.zeros((len(self.classes), 2, SCORE_BINS))
        for k in range(len(self.classes)):
            histograms[k, 0] += np.bincount(bins[~onehot[:, k], k], minlength=SCORE_BINS)
            histograms[k, 1] += np.bincount(bins[onehot[:, k], k], minlength=SCORE_BINS)
        return float(self.loss(logits, targets).item()), histograms

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        aucs = histogram_auc(totals)
        known = [a for a in aucs if a is not None]
        return (float(np.mean(known)) if known else 0.5), {"auc": [None if a is None else round(a, 4) for a in aucs]}

    def predict_cases(self, case_ids: list[str], transforms=None) -> np.ndarray:
        """(N, K) probabilities of preprocessed cases: the image alone, or averaged over test-time
        views; in the precision the run trained in (what predict's --precision auto gives too)."""
        from medseg.precision import autocast, resolve_precision
        from medseg.tasks.classification.test_time import predict_views

        images = load_images(self.context.data_folder, case_ids)
        transforms = transforms or [("identity", None)]
        device = self.context.device
        precision = resolve_precision(getattr(self.context.options, "precision", "float32"), device) if self.mixed_precision else "float32"
        self.network.eval()
        outputs = []
        with torch.no_grad(), autocast(device, precision):
            for start in range(0, len(case_ids), 64):
                batch = images[start : start + 64].float().to(self.context.device)
                outputs.append(predict_views(self.network, batch, transforms, self.probabilities).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)))

    def final_validation(self) -> dict:
        from medseg.evaluation.classification import classification_report
        from medseg.tasks.classification.test_time import view_transforms

        context = self.context
        probabilities = self.predict_cases(context.val_cases)
        targets = targets_of(self.table, context.val_cases)
        folder = context.fold_folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        write_predictions_csv(folder / PREDICTIONS_CSV, context.val_cases, probabilities, self.classes, targets=targets, multi_label=self.multi_label)
        # the same cases through the test-time views: the cross-validation decides whether predict uses them
        transforms = view_transforms(context.configuration.augmentation)
        viewed = self.predict_cases(context.val_cases, transforms)
        write_predictions_csv(folder / TTA_PREDICTIONS_CSV, context.val_cases, viewed, self.classes, targets=targets, multi_label=self.multi_label)
        report = classification_report(probabilities, targets, self.classes, self.multi_label)
        report["thresholds_picked_on"] = "this fold's validation predictions (optimistic for thresholded metrics)"
        report["tta"] = {"views": len(transforms), "mean_auc": classification_report(viewed, targets, self.classes, self.multi_label)["mean"]["auc"]}
        write_json_atomic(folder / "summary.json", report)
        context.log(
            f"fold validation: mean AUC {_text(report['mean']['auc'])} over {len(context.val_cases)} cases "
            f"({_text(report['tta']['mean_auc'])} with {len(transforms)} test-time views)"
        )
        return report
