"""The classification task: one label vector (multi-label) or one class (multi-class) per 2D image.

Stages, as the pipeline runs them:
- fingerprint: image sizes, spacings and per-channel intensity statistics of the training images;
- plan: a square input size (the median image side, at most 224, a multiple of the ViT patch) and a
  batch, shrunk on a CPU until a measured training step fits the step time and the run's budget
  sees the data often enough; per-image z-scoring; augmentation for radiographs (grayscale) or
  endoscopy/photographs (colour); BCE for multi-label, CE (optionally class-weighted) for multi-class;
- preprocess: every image resized (antialiased) to the input size and z-scored, float16 on disk;
- folds: a patient never in two folds when the table has a group/patient column, classes spread
  evenly over the folds;
- training: AdamW with warm-up and cosine decay, layer-wise learning-rate decay when the family
  numbers its layers (ViT), validation score = mean ROC AUC (from additive score histograms);
- final validation: every held-out image predicted, probabilities in ``validation/predictions.csv``;
- cross-validation: out-of-fold predictions pooled; per-class thresholds (Youden's J) picked on them
  and stored in the model folder (``thresholds.json``) for prediction; AUC, F1, balanced accuracy,
  sensitivity and specificity per class and mean; ROC plot ``roc.png``;
- predict: ``predictions.csv`` with a probability per class and the predicted classes."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.atomic import atomic_path, write_json_atomic
from medseg.errors import DatasetError, MedsegError
from medseg.tasks.registry import PlanRequest, PredictRequest, RunContext, Task, register_task

TASK = "classification"
MAX_SIDE = 224  # ViT's usual input; larger images are resized down
CNN_STRIDE = 32  # a ResNet's total downsampling: its input side is a multiple of it
MIN_PATCHES_PER_SIDE = 4
PREFERRED_BATCH, MIN_BATCH, GPU_BATCH = 32, 8, 64
MIN_PASSES = 30  # a run's budget should see the training images at least this often
SAMPLES_PER_CASE = 4096  # intensity sample per image for the fingerprint
SCORE_BINS = 200  # validation score histograms (additive across steps and processes)
GROUP_COLUMNS = ("group", "patient", "patient_id", "patientid")
GRADIENT_CLIP = 5.0
WARMUP_FRACTION = 0.05
PREDICTIONS_CSV = "predictions.csv"


# ------------------------------------------------------------------------------------ fingerprint
def analyze_image(case) -> dict:
    """Shape, spacing and an intensity sample of one training image (runs in a worker)."""
    from medseg.data.cases import load_case_images

    try:
        image = load_case_images(case)
    except MedsegError as error:
        return {"case_id": case.case_id, "error": str(error)}
    except Exception as error:  # an unreadable file must not kill the whole fingerprint
        return {"case_id": case.case_id, "error": f"{case.images[0]}: unreadable ({type(error).__name__}: {error})"}
    array = image.array
    if not np.isfinite(array).all():
        return {"case_id": case.case_id, "error": f"{case.images[0]}: {int((~np.isfinite(array)).sum())} voxels are NaN or infinite"}
    rng = np.random.default_rng(1234)
    flat = array.reshape(array.shape[0], -1)
    chosen = rng.integers(flat.shape[1], size=min(SAMPLES_PER_CASE, flat.shape[1]))
    return {
        "case_id": case.case_id, "spacing": [float(s) for s in image.spacing], "shape": list(image.spatial_shape),
        "samples": [channel[chosen] for channel in flat],
    }


def fingerprint(description, workers, progress):
    from medseg.data.layout import list_cases
    from medseg.parallel import map_parallel
    from medseg.planning.fingerprint import Fingerprint, intensity_statistics

    cases, problems = list_cases(description, "Tr")
    if problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    if not cases:
        raise DatasetError(f"{description.folder}: imagesTr holds no cases")
    results = map_parallel(analyze_image, cases, workers, progress)
    failures = [r["error"] for r in results if "error" in r]
    if failures:
        raise DatasetError(f"{len(failures)} image(s) could not be used: " + "; ".join(failures[:5]))
    ndims = {len(r["shape"]) for r in results}
    if ndims != {2}:
        raise DatasetError(f"{description.folder}: the classification task learns from 2D images; found {sorted(ndims)}D")
    properties = {
        str(c): intensity_statistics(np.concatenate([r["samples"][c] for r in results])) for c in range(description.num_channels)
    }
    return Fingerprint(
        dataset_name=description.folder.name, ndim=2,
        channel_names=[description.channel_names[k] for k in sorted(description.channel_names)],
        case_ids=[r["case_id"] for r in results], spacings=[r["spacing"] for r in results],
        shapes_before_crop=[r["shape"] for r in results], shapes_after_crop=[r["shape"] for r in results],
        left_right_axes=[None for _ in results], object_extents_mm=[[] for _ in results],
        median_relative_size_after_cropping=1.0, foreground_intensity_properties_per_channel=properties,
    )


# ------------------------------------------------------------------------------------------- plan
def _input_side(median_shape, patch: int) -> int:
    side = min(int(min(median_shape)), MAX_SIDE)
    return max(MIN_PATCHES_PER_SIDE * patch, side // patch * patch)


def measure_step_seconds(architecture: dict, in_channels: int, num_classes: int, batch: int, repeats: int = 2) -> float:
    """Seconds of one AdamW training step of the planned network on this CPU."""
    from medseg.models.registry import build_model

    network = build_model(architecture, in_channels, num_classes)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-4)
    images = torch.randn(batch, in_channels, *architecture["kwargs"]["input_size"])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        network(images).sum().backward()
        optimizer.step()

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _size_for_time(
    architecture: dict, channels: int, classes: int, num_cases: int, step_seconds: float, training_seconds: float | None, patch: int,
):
    """Halve the batch (to 16), then shrink the input side, until a measured step fits ``step_seconds``
    and the run's budget passes over the training images at least MIN_PASSES times."""
    kwargs = architecture["kwargs"]
    batch, measured = PREFERRED_BATCH, []
    while True:
        seconds = measure_step_seconds(architecture, channels, classes, batch)
        measured.append({"input_size": list(kwargs["input_size"]), "batch": batch, "step_seconds": round(seconds, 4)})
        passes = training_seconds / (seconds / batch) / max(num_cases, 1) if training_seconds else math.inf
        side = kwargs["input_size"][0]
        can_shrink = side > MIN_PATCHES_PER_SIDE * patch
        if seconds > step_seconds and batch > 2 * MIN_BATCH and passes >= MIN_PASSES:
            batch //= 2
            continue
        if not can_shrink or (passes >= MIN_PASSES and seconds <= step_seconds):
            return batch, measured
        smaller = max(MIN_PATCHES_PER_SIDE * patch, int(side * 0.8) // patch * patch)
        kwargs["input_size"] = [smaller, smaller]


def size_image_plan(fingerprint_file, description, request: PlanRequest) -> dict:
    """What every 2D image task plans alike: the family, input side and patch, batch (measured on a
    CPU), spacing and median shape. Used by classification and masked pretraining."""
    from medseg.models.registry import get_model_family
    from medseg.planning.device import CPU_STEP_SECONDS
    from medseg.planning.fingerprint import Fingerprint

    fingerprint = Fingerprint.load(fingerprint_file)
    family = get_model_family(request.model)
    if fingerprint.ndim not in family.dims:
        raise MedsegError(f"{request.model} is {'/'.join(f'{d}D' for d in family.dims)}; {description.folder.name} holds {fingerprint.ndim}D images")
    channels = description.num_channels
    median_shape = [int(s) for s in np.median(np.array(fingerprint.shapes_before_crop), axis=0)]
    options = dict(request.model_options or {})
    uses_patches = "patch" in family.options  # a ViT: the side is a multiple of its patch; a CNN: of its total stride
    patch = int(options.get("patch", 8 if min(median_shape) <= 96 else 16)) if uses_patches else CNN_STRIDE
    side = _input_side(median_shape, patch)
    architecture = {"name": family.name, "kwargs": {"input_size": [side, side], **({"patch": patch} if uses_patches else {}), **options}}
    outputs = max(len(description.classes), 1)
    preset = request.preset or {}
    if request.memory_gb is not None or preset.get("mode") == "memory" or torch.cuda.is_available():
        batch, planner = GPU_BATCH, {"mode": "memory"}
    else:
        step_seconds = request.step_seconds or preset.get("step_seconds") or CPU_STEP_SECONDS
        batch, measured = _size_for_time(architecture, channels, outputs, len(fingerprint.case_ids), step_seconds, request.training_seconds, patch)
        planner = {"mode": "time", "step_seconds": step_seconds, "training_seconds": request.training_seconds, "measured": measured}
    planner.update(model=family.name, **({"model_options": options} if options else {}))
    return {
        "fingerprint": fingerprint, "family": family, "architecture": architecture, "batch": batch, "planner": planner,
        "median_shape": median_shape, "spacing": [float(s) for s in np.median(np.array(fingerprint.spacings), axis=0)],
    }


def image_plans(sized: dict, description, request: PlanRequest, labels: dict[str, int], augmentation: dict, training: dict):
    """Plans with one "2d" configuration from ``size_image_plan``'s sizing."""
    from medseg.planning.plans import ConfigurationPlan, Plans

    fingerprint, channels = sized["fingerprint"], description.num_channels
    configuration = ConfigurationPlan(
        name="2d", ndim=2, spacing=sized["spacing"], median_shape=sized["median_shape"],
        patch_size=list(sized["architecture"]["kwargs"]["input_size"]), batch_size=sized["batch"], batch_dice=False,
        normalization=[{"scheme": "zscore_per_image", "use_mask": False, "properties": {}} for _ in range(channels)],
        architecture=sized["architecture"], resampling={"image": "bilinear, antialiased"}, data_identifier=f"{request.plans_name}_2d",
        augmentation=augmentation, training=training,
    )
    return Plans(
        dataset_name=fingerprint.dataset_name, plans_name=request.plans_name, planner=sized["planner"],
        transpose_forward=[0, 1], transpose_backward=[0, 1], original_median_spacing=configuration.spacing,
        original_median_shape=sized["median_shape"], labels=labels, channel_names=list(fingerprint.channel_names),
        foreground_intensity_properties_per_channel=fingerprint.foreground_intensity_properties_per_channel,
        configurations={"2d": configuration},
    )


def plan(fingerprint_file, description, request: PlanRequest):
    from medseg.training.image_augmentation import augmentation_preset

    table = labels_table(description)
    sized = size_image_plan(fingerprint_file, description, request)
    classes = list(description.classes)
    positives = np.zeros(len(classes))
    for target in table.targets.values():
        positives += np.asarray(target) if description.multi_label else np.eye(len(classes))[target]
    width = sized["architecture"]["kwargs"].get("width", 192)
    training = {
        "optimizer": "adamw", "learning_rate": 1e-3 if width <= 192 else 5e-4, "weight_decay": 0.05,
        "warmup_fraction": WARMUP_FRACTION, "layer_decay": 1.0, "pretrained_layer_decay": 0.75, "multi_label": description.multi_label,
        "loss": "bce" if description.multi_label else "ce", "class_weights": None,
        "class_counts": {name: int(count) for name, count in zip(classes, positives)},
    }
    if has_gates(sized["architecture"], description.num_channels, len(classes)):
        # HAG: the gates get their own optimizer and forward pass; as published, the first pass's
        # gradients also reach the main step (set false to keep the two passes apart)
        training.update(gradient_routing=True, gate_gradients_reach_main=True)
    labels = {name: index for index, name in enumerate(classes)}
    return image_plans(sized, description, request, labels, augmentation_preset(description.num_channels), training)


def has_gates(architecture: dict, in_channels: int, num_classes: int) -> bool:
    from medseg.models.registry import build_model
    from medseg.models.vit import is_gate_parameter

    with torch.device("meta"):
        network = build_model(architecture, in_channels, num_classes)
    return any(is_gate_parameter(name) for name, _ in network.named_parameters())


# ------------------------------------------------------------------------------------- preprocess
def prepare_image(array: np.ndarray, size: list[int], source: str = "the image") -> np.ndarray:
    """array: (C, H, W) -> (C, *size) float32, resized (antialiased) and z-scored per channel."""
    if array.ndim != 3:
        raise MedsegError(f"{source}: a 2D image was expected, got an array of shape {list(array.shape[1:])}")
    if not np.isfinite(array).all():
        raise MedsegError(f"{source}: {int((~np.isfinite(array)).sum())} pixels are NaN or infinite")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if list(tensor.shape[2:]) != list(size):
        tensor = F.interpolate(tensor, size=list(size), mode="bilinear", align_corners=False, antialias=True)
    flat = tensor[0].flatten(1)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-6)
    return ((tensor[0] - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)).numpy()


def _signature(configuration) -> dict:
    return {"input_size": list(configuration.patch_size), "normalization": configuration.normalization, "version": 1}


def _preprocess_case(job) -> str | None:
    case, target, size = job
    from medseg.data.cases import load_case_images

    try:
        image = prepare_image(load_case_images(case).array, size, str(case.images[0]))
    except MedsegError as error:
        return str(error)
    except Exception as error:
        return f"{case.images[0]}: unreadable ({type(error).__name__}: {error})"
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, image=image.astype(np.float16))
    return None


def fresh_folder(folder: Path, expected: dict) -> None:
    """Create the preprocessed folder; a changed plan (signature) removes what an older plan prepared."""
    folder.mkdir(parents=True, exist_ok=True)
    signature_file = folder / "signature.json"
    if signature_file.is_file() and json.loads(signature_file.read_text()) != expected:
        for stale in folder.glob("*.npz"):
            stale.unlink()  # the plan changed: every case is prepared again
    write_json_atomic(signature_file, expected)


TEST_PREFIX = "imagesTs__"  # preprocessed test images (masked pretraining may learn from them): never a training case id


def preprocess(description, plans, configuration, folder: Path, workers, progress) -> tuple[int, int]:
    """Every training image (and the test images, when the plan includes them) at the input size."""
    from medseg.data.layout import list_cases
    from medseg.parallel import map_parallel

    fresh_folder(folder, _signature(configuration))
    targets = []
    for split in ("Tr", "Ts") if configuration.training.get("include_test") else ("Tr",):
        if split == "Ts" and not (description.folder / "imagesTs").is_dir():
            continue
        cases, problems = list_cases(description, split)
        if problems:
            raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
        prefix = TEST_PREFIX if split == "Ts" else ""
        targets += [(case, folder / f"{prefix}{case.case_id}.npz") for case in cases]
    jobs = [(case, target, configuration.patch_size) for case, target in targets if not target.is_file()]
    errors = [e for e in map_parallel(_preprocess_case, jobs, workers, progress) if e]
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be preprocessed: " + "; ".join(errors[:5]))
    return len(jobs), len(targets) - len(jobs)


def preprocessed_cases(data_folder: Path, plans, configuration) -> list[str]:
    if not data_folder.is_dir():
        return []
    signature_file = data_folder / "signature.json"
    if signature_file.is_file() and json.loads(signature_file.read_text()) != _signature(configuration):
        raise MedsegError(f"{data_folder}: preprocessed for another plan; rerun `medseg preprocess`")
    return sorted(p.stem for p in data_folder.glob("*.npz") if not p.name.startswith(".") and not p.stem.startswith(TEST_PREFIX))


def load_images(data_folder: Path, case_ids: list[str], key: str = "image") -> torch.Tensor:
    """(N, C, H, W) float16 images of the cases, in order (``key``: another array of the case files)."""
    arrays = []
    for case_id in case_ids:
        with np.load(data_folder / f"{case_id}.npz") as content:
            arrays.append(content[key])
    return torch.from_numpy(np.stack(arrays))


# ------------------------------------------------------------------------------------ folds, targets
def labels_table(description):
    from medseg.data.classification import read_labels_table

    table, problems = read_labels_table(description, "Tr")
    if table is None or problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    return table


def split_keys(description, case_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(group per case from a group/patient column, stratum per case: its class, or its rarest positive class)."""
    table = labels_table(description)
    groups = {}
    for case in case_ids:
        extra = {k.lower(): v for k, v in table.extra.get(case, {}).items()}
        group = next((extra[c].strip() for c in GROUP_COLUMNS if (extra.get(c) or "").strip()), "")
        if group:
            groups[case] = group
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


def classes_of(plans) -> list[str]:
    """The class names in output order (plans store them as name -> output index)."""
    return sorted(plans.labels, key=plans.labels.get)


def targets_of(table, case_ids: list[str]) -> np.ndarray:
    """(N, K) 0/1 for multi-label, (N,) class indices for multi-class, from a LabelsTable."""
    missing = [c for c in case_ids if c not in table.targets]
    if missing:
        raise DatasetError(f"{table.path}: no row for case(s) {', '.join(missing[:5])}")
    return np.array([table.targets[c] for c in case_ids])


# ----------------------------------------------------------------------------------- training run
def parameter_groups(network: torch.nn.Module, weight_decay: float, layer_decay: float, exclude: set[str] = frozenset()) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings; learning-rate scale layer_decay ** (depth from the head).
    ``exclude``: parameter names another optimizer owns (the gates, under gradient routing)."""
    layer_id = getattr(network, "layer_id", None)
    num_layers = (max(layer_id(n) for n, _ in network.named_parameters()) + 1) if layer_id else 1
    groups: dict[tuple, dict] = {}
    for name, parameter in network.named_parameters():
        if not parameter.requires_grad or name in exclude:
            continue
        no_decay = parameter.ndim <= 1 or name.endswith(("pos_embed", "cls_token"))
        layer = layer_id(name) if layer_id else 0
        scale = layer_decay ** (num_layers - 1 - layer) if layer_id else 1.0
        key = (layer, no_decay)
        group = groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale})
        group["params"].append(parameter)
    return list(groups.values())


def warmup_cosine(progress: float, warmup: float) -> float:
    """Learning-rate factor: linear warm-up over the first ``warmup`` of training, then cosine to 0."""
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1 - warmup, 1e-6))))


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
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        self.table = labels_table(load_dataset_description(context.model_folder.raw_folder))  # read once per run
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

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets)
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return F.cross_entropy(logits, targets, weight=weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
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

    def set_progress(self, progress: float) -> None:
        factor = warmup_cosine(progress, self.training.get("warmup_fraction", WARMUP_FRACTION))
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.learning_rate * group.get("lr_scale", 1.0) * factor

    def train_step(self, batch, models) -> float:
        images, targets = (t.to(self.context.device, non_blocking=True) for t in batch)
        if self.routing:
            return self._routed_step(images, targets, models["network"])
        optimizer = self.optimizers["network"]
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(models["network"](images), targets)
        if not torch.isfinite(loss):
            return float(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), GRADIENT_CLIP)
        optimizer.step()
        return float(loss.item())

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

    def predict_cases(self, case_ids: list[str]) -> np.ndarray:
        """(N, K) probabilities of preprocessed cases, without augmentation."""
        images = load_images(self.context.data_folder, case_ids)
        self.network.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, len(case_ids), 64):
                batch = images[start : start + 64].float().to(self.context.device)
                outputs.append(self.probabilities(self.network(batch)).float().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)))

    def final_validation(self) -> dict:
        from medseg.evaluation.classification import classification_report

        context = self.context
        probabilities = self.predict_cases(context.val_cases)
        targets = targets_of(self.table, context.val_cases)
        folder = context.fold_folder / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        write_predictions_csv(folder / PREDICTIONS_CSV, context.val_cases, probabilities, self.classes, targets=targets, multi_label=self.multi_label)
        report = classification_report(probabilities, targets, self.classes, self.multi_label)
        report["thresholds_picked_on"] = "this fold's validation predictions (optimistic for thresholded metrics)"
        write_json_atomic(folder / "summary.json", report)
        context.log(f"fold validation: mean AUC {_text(report['mean']['auc'])} over {len(context.val_cases)} cases")
        return report


def _text(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------------ predictions files
def write_predictions_csv(
    path: Path, case_ids: list[str], probabilities: np.ndarray, classes: list[str], targets: np.ndarray | None = None,
    multi_label: bool = True, thresholds: dict[str, float] | None = None,
) -> None:
    """case, one probability column per class, then the predicted classes (and the targets, for validation)."""
    header = ["case", *classes, "predicted"] + ([f"target:{name}" for name in classes] if targets is not None else [])
    with atomic_path(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for index, case_id in enumerate(case_ids):
                row = probabilities[index]
                if multi_label:
                    limits = thresholds or {name: 0.5 for name in classes}
                    predicted = "|".join(name for k, name in enumerate(classes) if row[k] >= limits[name])
                else:
                    predicted = classes[int(np.argmax(row))]
                line = [case_id, *(f"{value:.6f}" for value in row), predicted]
                if targets is not None:
                    target = targets[index] if multi_label else np.eye(len(classes), dtype=int)[int(targets[index])]
                    line += [str(int(v)) for v in target]
                writer.writerow(line)


def read_predictions_csv(path: Path, classes: list[str]) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    """(case ids, (N, K) probabilities, (N, K) 0/1 targets when the file holds them, (N, K) predicted classes)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise MedsegError(f"{path}: cannot read ({error})") from None
    if not rows or any(name not in rows[0] for name in ["case", *classes, "predicted"]):
        raise MedsegError(f"{path}: expected columns case,{','.join(classes)},predicted")
    try:
        probabilities = np.array([[float(row[name]) for name in classes] for row in rows])
    except (TypeError, ValueError) as error:
        raise MedsegError(f"{path}: a probability is not a number ({error})") from None
    if not np.isfinite(probabilities).all():
        raise MedsegError(f"{path}: holds NaN or infinite probabilities")
    decisions = np.zeros(probabilities.shape, dtype=bool)
    for index, row in enumerate(rows):
        for name in filter(None, (row["predicted"] or "").split("|")):
            if name not in classes:
                raise MedsegError(f"{path}:{index + 2}: predicted class {name!r} is not one of {classes}")
            decisions[index, classes.index(name)] = True
    with_targets = all(f"target:{name}" in rows[0] for name in classes)
    targets = np.array([[int(row[f"target:{name}"]) for name in classes] for row in rows]) if with_targets else None
    return [row["case"] for row in rows], probabilities, targets, decisions


def evaluate_predictions(predictions_csv: Path, labels_csv: Path, dataset_json: Path, output: Path | None = None) -> dict:
    """Score a predictions file against a labels table (e.g. labelsTs.csv): AUC from the
    probabilities, the thresholded metrics from the decisions the model made (its thresholds).
    Every labelled case must have a prediction: a mean over the cases that happened to work is refused."""
    from medseg.data.classification import read_labels_csv
    from medseg.data.layout import load_dataset_description
    from medseg.evaluation.classification import classification_report

    description = load_dataset_description(dataset_json.parent) if dataset_json.name == "dataset.json" else None
    if description is None or description.task_type != TASK:
        raise MedsegError(f"{dataset_json}: not the dataset.json of a classification dataset")
    table, problems = read_labels_csv(labels_csv, description)
    if table is None or problems:
        raise MedsegError("; ".join(problems[:5]) or f"{labels_csv}: unusable labels table")
    classes = description.classes
    cases, probabilities, _, decisions = read_predictions_csv(predictions_csv, classes)
    position = {case: index for index, case in enumerate(cases)}
    missing = sorted(set(table.targets) - set(position))
    if missing:
        raise MedsegError(f"{predictions_csv}: no prediction for {len(missing)} labelled case(s): {', '.join(missing[:5])}")
    chosen = [position[case] for case in table.targets]
    targets = np.array(list(table.targets.values()))
    report = classification_report(probabilities[chosen], targets, classes, description.multi_label, decisions=decisions[chosen])
    report["unlabelled_predictions"] = len(set(position) - set(table.targets))
    report["predictions"], report["references"] = str(predictions_csv), str(labels_csv)
    write_json_atomic(output or predictions_csv.with_name("summary.json"), report)
    return report


# ------------------------------------------------------------------------------------ crossval
def _multi_label(folder) -> bool:
    return bool(folder.configuration.training.get("multi_label", True))


def crossval(folder, folds) -> dict:
    from medseg.evaluation.classification import classification_report, pick_thresholds, roc_plot

    classes, multi_label = classes_of(folder.plans), _multi_label(folder)
    cases, probabilities, targets, per_fold = [], [], [], {}
    for fold in folds:
        path = folder.fold_folder(fold) / "validation" / PREDICTIONS_CSV
        if not path.is_file():
            raise MedsegError(f"{path}: fold {fold} has no finished validation")
        fold_cases, fold_probabilities, fold_targets, _ = read_predictions_csv(path, classes)
        if fold_targets is None:
            raise MedsegError(f"{path}: holds no target columns")
        overlap = set(fold_cases) & set(cases)
        if overlap:
            raise MedsegError(f"{path}: case(s) {', '.join(sorted(overlap)[:5])} are validated in two folds")
        cases += fold_cases
        probabilities.append(fold_probabilities)
        targets.append(fold_targets)
        summary = folder.fold_folder(fold) / "validation" / "summary.json"
        if summary.is_file():
            per_fold[fold] = json.loads(summary.read_text())["mean"]["auc"]
    probabilities, onehot = np.concatenate(probabilities), np.concatenate(targets)
    thresholds = pick_thresholds(probabilities, onehot, classes) if multi_label else None
    report = classification_report(probabilities, onehot if multi_label else onehot.argmax(1), classes, multi_label, thresholds)
    report.update(folds=list(folds), fold_mean_auc=per_fold, thresholds_picked_on="the pooled out-of-fold predictions (thresholded metrics are optimistic; AUC is not)")
    if multi_label:
        write_json_atomic(folder.path / "thresholds.json", {"thresholds": thresholds, "picked_on": "pooled out-of-fold validation predictions", "folds": list(folds)})
    write_json_atomic(folder.crossval_summary_path(), report)
    roc_plot(folder.path / "roc.png", probabilities, onehot.astype(bool), classes, f"{folder.info.dataset_name} {folder.info.model}: cross-validation ROC")
    return report


def report_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    metrics = ("auc", "f1", "balanced_accuracy", "sensitivity", "specificity")
    rows = [[name, *(_text(entry[m]) for m in metrics), str(entry["positives"])] for name, entry in report["per_class"].items()]
    rows.append(["[bold]mean[/bold]", *(_text(report["mean"][m]) for m in metrics), ""])
    if report.get("accuracy") is not None:
        rows.append(["accuracy", _text(report["accuracy"]), "", "", "", "", ""])
    return ["class", "AUC", "F1", "balanced acc.", "sensitivity", "specificity", "positives"], rows


def report_score(report: dict) -> float:
    return report["mean"]["auc"] or 0.0


def model_info(configuration) -> dict:
    return {"extra": {"multi_label": bool(configuration.training.get("multi_label", True))}}


# ---------------------------------------------------------------------------------------- predict
def load_thresholds(folder) -> dict[str, float] | None:
    path = folder.path / "thresholds.json"
    if not path.is_file():
        return None
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text())["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise MedsegError(f"{path}: not a thresholds file ({{'thresholds': {{class: number}}}})") from None


def predict(folder, request: PredictRequest):
    from medseg.inference.batch import BatchResult, read_case
    from medseg.inference.inputs import discover
    from medseg.models.registry import build_model

    if request.formats not in (None, "", "csv"):
        raise MedsegError(f"a classifier writes {PREDICTIONS_CSV} (probabilities per class); --format {request.formats} is for segmentation models")
    configuration, classes, multi_label = folder.configuration, classes_of(folder.plans), _multi_label(folder)
    channels = len(folder.plans.channel_names)
    device = torch.device(request.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    folds = request.folds or folder.folds()
    if not folds:
        raise MedsegError(f"{folder.path}: no trained fold")
    networks = []
    for fold in folds:
        network = build_model(configuration.architecture, channels, len(classes))
        network.load_state_dict(folder.load_module_states(fold, request.checkpoint)["network"])
        networks.append(network.to(device).eval())
    thresholds = load_thresholds(folder) if multi_label else None
    discovery = discover(request.source, request.series)
    result = BatchResult(folds=list(folds), ignored=list(discovery.ignored), cases=len(discovery.cases))
    case_ids, rows = [], []
    for index, case in enumerate(discovery.cases):
        try:
            image = read_case(case)
            if image.num_channels != channels:
                raise MedsegError(f"{case.case_id}: has {image.num_channels} channel(s); the model takes {channels}")
            prepared = torch.from_numpy(prepare_image(image.array, configuration.patch_size, case.case_id))[None].to(device)
            with torch.no_grad():
                logits = [network(prepared) for network in networks]
                probabilities = [torch.sigmoid(x) if multi_label else torch.softmax(x, 1) for x in logits]
            rows.append(torch.stack(probabilities).mean(0)[0].float().cpu().numpy())
            case_ids.append(case.case_id)
        except MedsegError as error:
            result.failed[case.case_id] = str(error)
        if request.progress:
            request.progress(index + 1, len(discovery.cases))
    request.output.mkdir(parents=True, exist_ok=True)
    target = request.output / PREDICTIONS_CSV
    probabilities = np.stack(rows) if rows else np.zeros((0, len(classes)))
    write_predictions_csv(target, case_ids, probabilities, classes, multi_label=multi_label, thresholds=thresholds)
    result.written.append(target)
    return result


register_task(
    Task(
        name=TASK,
        summary="one label vector (multi-label) or class (multi-class) per 2D image: AUC, F1, balanced accuracy, grouped folds",
        dataset_types=("classification",),
        fingerprint=fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=preprocessed_cases,
        start_run=ClassificationRun,
        model_info=model_info,
        predict=predict,
        crossval=crossval,
        report_rows=report_rows,
        report_score=report_score,
        split_keys=split_keys,
    )
)
