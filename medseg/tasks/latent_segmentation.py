"""The latent-segmentation task (GMS): segment in the latent space of a frozen autoencoder.

An image and its mask are both encoded by the autoencoder (the mask as a 3-channel image); the
``gms`` mapper learns image latent -> mask latent. Loss: latent MSE on the three finest
deep-supervision outputs plus Dice on the decoded mask (gradients through the frozen decoder) on
the three (a GPU plan, as GMS) or on the finest only (a CPU plan); bf16 where --precision allows; the input is
the image latent's mean or, half the time, a sample (mean + sigma * noise). AdamW with warm-up and
cosine decay. Images are resized to the plan's square side (128 on a CPU, 224 on a GPU as GMS) and
the predicted mask back to the image's size. One foreground label as GMS, or up to seven: each
label a colour of the mask image the autoencoder encodes, read back by the nearest colour
(medseg.data.autoencoder_images); the Dice term is then the mean soft Dice over the labels.

The autoencoder: ``--autoencoder FOLDER`` (a KL autoencoder in diffusers' AutoencoderKL layout, e.g.
Stable Diffusion's ``vae/``, or a TAESD-family folder such as the natural-image TAEF2; GMS's paper
uses a frozen natural-image autoencoder), else the one ``medseg pretrain-ae`` trained on the same
dataset. It is copied into the model folder (``autoencoder/``, sha256 in ``source.json``), so the
folder predicts on its own; a fold trained with another autoencoder is refused. A TAESD-family
latent (deterministic, unscaled) is shifted and scaled per channel, fitted on the training images. Latents of the training cases are computed once per autoencoder and cached
beside the preprocessed images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.autoencoder_images import MAX_LABELS, autoencoder_image, decoded_probabilities, labels_as_image, labels_at
from medseg.errors import DatasetError, MedsegError
from medseg.preprocessing import images2d
from medseg.tasks import autoencoder_pretraining as pretraining
from medseg.tasks import masked_pretraining, segmentation
from medseg.tasks.capabilities import CROSSVAL, LABEL_MAPS, LATENT_SPACE, ONNX, RAY
from medseg.tasks.latent_prediction import AUTOENCODER_FOLDER, LatentGraph, LatentPredictor, latent_onnx_graph, load_latent_predictor, mapper_architecture
from medseg.tasks.registry import PlanRequest, RunContext, Task, register_task
from medseg.training import optimizers
from medseg.training.schedules import warmup_then_cosine

TASK = "latent_segmentation"
GPU_SIDE = 224  # GMS's input size
SUPERVISED_OUTPUTS = 3  # the finest deep-supervision outputs in the loss, as GMS
# The plan's loss and augmentation choices (its "training" block; older plans lack them and read
# these): the weights of the latent MSE and of the decoded Dice, on how many of the supervised
# outputs the Dice is taken through the decoder (GMS: all three; each one is a decode and its
# backward, most of a CPU step), and the flips the training images are also encoded under
# ("h", "v", "hv": encoded once and cached; latents of a flipped image are not flipped latents).
LOSS_DEFAULTS = {"latent_loss_weight": 1.0, "dice_loss_weight": 1.0, "dice_outputs": SUPERVISED_OUTPUTS, "flips": []}
FLIPS = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
# A CPU plan takes the Dice on the finest output only: on Kvasir-SEG fold 0 with TAEF2, 5 minutes in
# bf16, it trained 344 steps instead of 170 and scored 0.744 instead of 0.676 (bench/pipeline/gms_tries.py).
CPU_DICE_OUTPUTS = 1


def plan(fingerprint_file, description, request: PlanRequest):
    values = list(description.labels.values())
    foreground = sorted(v for v in values if v != 0) if all(isinstance(v, int) for v in values) else None  # region tuples: not for GMS
    if not foreground or foreground != list(range(1, len(foreground) + 1)) or len(foreground) > MAX_LABELS:
        raise MedsegError(
            f"{request.model} segments 1 to {MAX_LABELS} foreground labels numbered 1, 2, ... (each a colour of the mask image); "
            f"{description.folder.name} has {dict(description.labels)}"
        )
    settings = {**(request.preset or {}), **(request.settings or {})}
    gpu = torch.cuda.is_available() or request.memory_gb is not None
    if gpu:
        settings.setdefault("input_size", GPU_SIDE)
    side = pretraining.planned_side(fingerprint_file, PlanRequest(**{**request.__dict__, "settings": settings}), request.model)
    training = {
        "optimizer": "adamw", "learning_rate": 2e-3, "weight_decay": 1e-4, "warmup_fraction": 0.05, "latent_input_sampling": 0.5, **LOSS_DEFAULTS,
        "dice_outputs": SUPERVISED_OUTPUTS if gpu else CPU_DICE_OUTPUTS,
    }
    architecture = {"name": request.model, "kwargs": dict(request.model_options or {})}
    return pretraining.square_plans(fingerprint_file, description, request, side, 8, architecture, training, dict(description.labels))


# ------------------------------------------------------------------------------------- preprocess
def _prepare_case(job) -> str | None:
    case, target, side = job
    from medseg.data.cases import load_case_images, load_case_label

    try:
        image = load_case_images(case)
        label = load_case_label(case, image)
        pretraining.write_case(target, autoencoder_image(image.array, side, str(case.images[0])), labels_at(label.array[0], side))
    except MedsegError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - named, and the others go on
        return f"{case.images[0]}: unreadable ({type(error).__name__}: {error})"
    return None


def preprocess(description, plans, configuration, folder: Path, workers, progress) -> tuple[int, int]:
    from medseg.data.layout import list_cases
    from medseg.parallel import map_parallel

    images2d.fresh_folder(folder, pretraining.signature(configuration, TASK))
    cases, problems = list_cases(description, "Tr")
    if problems:
        raise DatasetError(f"{description.folder}: " + "; ".join(problems[:5]) + " (run `medseg datasets check`)")
    side = configuration.patch_size[0]
    targets = [(case, folder / f"{case.case_id}.npz") for case in cases]
    jobs = [(case, target, side) for case, target in targets if not target.is_file()]
    errors = [e for e in map_parallel(_prepare_case, jobs, workers, progress) if e]
    if errors:
        raise DatasetError(f"{len(errors)} case(s) could not be prepared: " + "; ".join(errors[:5]))
    return len(jobs), len(targets) - len(jobs)


# ------------------------------------------------------------------------------------- the autoencoder
def default_autoencoder(raw_folder: Path) -> Path:
    """Where ``medseg pretrain-ae`` leaves the dataset's own autoencoder."""
    from medseg.paths import configuration_model_folder, default_plans_name, load_plans

    try:
        plans = load_plans(raw_folder, default_plans_name("kl_autoencoder"))
    except (MedsegError, OSError):
        return Path("(none: not pretrained)")
    return configuration_model_folder(raw_folder, plans, "2d") / "fold_all" / AUTOENCODER_FOLDER


def model_autoencoder(model_folder, pretrained: str | None):
    """The model folder's autoencoder, copied there from ``pretrained`` (or the dataset's own) at the
    first run; a later run may not bring another one."""
    from medseg.models.autoencoders import copy_autoencoder, load_frozen_autoencoder, weights_digest

    kept = Path(model_folder.path) / AUTOENCODER_FOLDER
    source = Path(pretrained) if pretrained else None
    if kept.is_dir():
        if source is not None:
            load_frozen_autoencoder(source)  # raises, naming what is wrong with the folder
            if weights_digest(source) != weights_digest(kept):  # compared by content
                raise MedsegError(f"{model_folder.path}: its folds were trained with the autoencoder in {kept}; --autoencoder {source} is another one (use a new plans name or remove the model folder)")
        return load_frozen_autoencoder(kept)
    source = source or default_autoencoder(model_folder.raw_folder)
    if not source.exists():
        raise MedsegError(
            f"GMS needs a frozen autoencoder: pass --autoencoder FOLDER (a KL autoencoder in diffusers' layout, or a TAESD-family "
            f"folder with NAME_encoder.pth / NAME_decoder.pth) or run `medseg pretrain-ae --dataset {model_folder.raw_folder.name}` first (looked for {source})"
        )
    return copy_autoencoder(source, kept)


def fit_scaling_if_needed(autoencoder, data_folder: Path, case_ids: list[str], device: torch.device, count: int = 64) -> None:
    """A deterministic (TAESD-family) autoencoder's latents are shifted and scaled per channel, fitted
    once per model folder on up to ``count`` training images spread over the sorted case list."""
    if not getattr(autoencoder, "deterministic", False) or autoencoder.scaling_fitted:
        return
    from medseg.models.taesd import fit_latent_scaling

    chosen = [case_ids[int(i)] for i in np.unique(np.linspace(0, len(case_ids) - 1, min(count, len(case_ids))).round())]
    images = images2d.load_images(data_folder, chosen).float().to(device)
    fit_latent_scaling(autoencoder, images, autoencoder.folder)


@torch.no_grad()
def encode_cases(
    autoencoder, data_folder: Path, case_ids: list[str], device: torch.device, num_classes: int = 2, batch: int = 16, flip: str | None = None,
) -> dict[str, torch.Tensor]:
    """Image latent mean and log-variance, mask latent mean, and the labels, per case (in order), of the
    images as they are or ``flip``ped (a key of FLIPS); cached in ``data_folder`` per autoencoder (its
    weights' digest), case list, label count and flip."""
    from medseg.models.autoencoders import folder_digest

    labels = f"|{num_classes}" if num_classes > 2 else ""  # binary masks are drawn as before: their caches stay valid
    flipped = f"|flip {flip}" if flip else ""
    key = hashlib.sha256((folder_digest(autoencoder) + "|" + ",".join(case_ids) + labels + flipped).encode()).hexdigest()[:16]
    cache = data_folder / f"latents_{key}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    parts: dict[str, list[torch.Tensor]] = {"image_mean": [], "image_logvar": [], "mask_latent": [], "mask": []}
    for first in range(0, len(case_ids), batch):
        chosen = case_ids[first : first + batch]
        images = images2d.load_images(data_folder, chosen).float().to(device)
        masks = images2d.load_images(data_folder, chosen, "mask").float()[:, None].to(device)
        if flip:
            images, masks = images.flip(FLIPS[flip]), masks.flip(FLIPS[flip])
        mean, logvar = autoencoder.encode(images)
        parts["image_mean"].append(mean.cpu())
        parts["image_logvar"].append(logvar.cpu())
        parts["mask_latent"].append(autoencoder.encode(labels_as_image(masks))[0].cpu())
        parts["mask"].append(masks.cpu().to(torch.uint8))
    latents = {name: torch.cat(tensors) for name, tensors in parts.items()}
    from medseg.atomic import atomic_path

    with atomic_path(cache) as temporary:
        torch.save(latents, temporary)
    return latents


def loss_settings(training: dict, plans_source) -> dict:
    """The plan's loss and flip settings (LOSS_DEFAULTS where an older plan lacks them), checked."""
    settings = {key: training.get(key, default) for key, default in LOSS_DEFAULTS.items()}
    unknown = [f for f in settings["flips"] if f not in FLIPS] if isinstance(settings["flips"], list) else [settings["flips"]]
    if unknown:
        raise MedsegError(f"{plans_source}: training.flips must list some of {', '.join(FLIPS)} (got {settings['flips']!r})")
    if settings["dice_outputs"] not in range(0, SUPERVISED_OUTPUTS + 1):
        raise MedsegError(f"{plans_source}: training.dice_outputs must be 0 to {SUPERVISED_OUTPUTS} (got {settings['dice_outputs']!r})")
    for key in ("latent_loss_weight", "dice_loss_weight"):
        if not isinstance(settings[key], (int, float)) or settings[key] < 0:
            raise MedsegError(f"{plans_source}: training.{key} must be a number >= 0 (got {settings[key]!r})")
    return settings


def soft_dice_loss(probability: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per image and label, averaged; probability and mask (B, K, H, W), foreground labels only."""
    dims = (2, 3)
    overlap = (probability * mask).sum(dims)
    return (1 - (2 * overlap + 1e-5) / (probability.sum(dims) + mask.sum(dims) + 1e-5)).mean()


# ------------------------------------------------------------------------------------- training
class LatentSegmentationRun:
    score_name, score_label = "pseudo_dice", "pseudo-Dice"

    def __init__(self, context: RunContext):
        from medseg.models.registry import build_model

        self.context = context
        configuration, options = context.configuration, context.options
        self.training = configuration.training
        if options.optimizer not in (None, "adamw"):
            raise MedsegError(f"the {TASK} task trains with adamw (got --optimizer {options.optimizer})")
        self.autoencoder = model_autoencoder(context.model_folder, getattr(options, "pretrained", None)).to(context.device)
        cases = sorted(set(context.train_cases) | set(context.val_cases))
        fit_scaling_if_needed(self.autoencoder, context.data_folder, cases, context.device)
        self.network = build_model(mapper_architecture(configuration, self.autoencoder), 3, 2, deep_supervision=True)
        self.modules = {"network": self.network}
        self.learning_rate = options.learning_rate or self.training["learning_rate"]
        self.optimizers = {"network": torch.optim.AdamW(self.network.parameters(), self.learning_rate, weight_decay=self.training["weight_decay"])}
        self.schedule = warmup_then_cosine(self.training.get("warmup_fraction", 0.05))
        self.gradient_clip = optimizers.ADAMW_GRADIENT_CLIP
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        self.num_classes = context.plans.num_classes
        self.index = {case: i for i, case in enumerate(cases)}
        self.losses = loss_settings(self.training, context.model_folder.path)
        variants = [encode_cases(self.autoencoder, context.data_folder, cases, context.device, self.num_classes, flip=flip) for flip in [None, *self.losses["flips"]]]
        self.latents = {name: torch.cat([v[name] for v in variants]) for name in variants[0]}  # row: variant * cases + case
        self.variants = len(variants)

    mixed_precision = True  # bf16 forward where --precision allows (the frozen decoder too); both losses are computed in float32

    def describe(self) -> str:
        c, parameters = self.context.configuration, sum(p.numel() for p in self.network.parameters()) / 1e6
        return (
            f"training gms ({parameters:.2f} M parameters) in the latent space of {self.autoencoder.folder} "
            f"({c.patch_size[0]}x{c.patch_size[1]} -> {self.latents['image_mean'].shape[-1]}x{self.latents['image_mean'].shape[-1]}), "
            f"batch {self.batch_size * self.context.world_size}, adamw lr {self.learning_rate:g}, loss {self.losses['latent_loss_weight']:g} x latent MSE + "
            f"{self.losses['dice_loss_weight']:g} x Dice through the decoder on {self.losses['dice_outputs']} output(s)"
            + (f", flips {'/'.join(self.losses['flips'])}" if self.losses["flips"] else "")
        )

    def batches(self, split: str, seed: int, background: bool):
        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        rows = torch.tensor([self.index[c] for c in cases])
        generator = torch.Generator().manual_seed(seed)
        sampling = self.training.get("latent_input_sampling", 0.5) if split == "train" else 0.0
        variants = self.variants if split == "train" else 1  # validation sees the images as they are
        while True:
            chosen = rows[torch.randint(len(rows), (self.batch_size,), generator=generator)]
            chosen = chosen + len(self.index) * torch.randint(variants, (self.batch_size,), generator=generator)
            mean, logvar = self.latents["image_mean"][chosen], self.latents["image_logvar"][chosen]
            sampled = torch.rand(len(chosen), 1, 1, 1, generator=generator) < sampling
            noise = torch.randn(mean.shape, generator=generator) * torch.exp(0.5 * logvar)
            yield torch.where(sampled, mean + noise, mean), self.latents["mask_latent"][chosen], self.latents["mask"][chosen].float()

    def _losses(self, outputs: list[torch.Tensor], target_latent: torch.Tensor, labels: torch.Tensor, dice_outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """labels (B, 1, H, W) -> latent MSE summed over the outputs, and the soft Dice of the decoded
        labels summed over the first ``dice_outputs``; both in float32 (the forward may be bf16)."""
        latent = sum(F.mse_loss(o.float(), target_latent.float()) for o in outputs)
        one_hot = F.one_hot(labels[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float()[:, 1:]
        dice = sum(soft_dice_loss(decoded_probabilities(self.autoencoder.decode(o).float(), self.num_classes)[:, 1:], one_hot) for o in outputs[:dice_outputs])
        return latent, dice

    def batch_loss(self, batch, models) -> torch.Tensor:
        """Latent MSE + Dice through the frozen decoder, on the finest outputs, weighted as planned."""
        z, target_latent, mask = (t.to(self.context.device, non_blocking=True) for t in batch)
        latent, dice = self._losses(models["network"](z)[:SUPERVISED_OUTPUTS], target_latent, mask, self.losses["dice_outputs"])
        return self.losses["latent_loss_weight"] * latent + self.losses["dice_loss_weight"] * dice

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        """-> loss and (3, K-1) pooled true positive, false positive, false negative pixel counts per label."""
        device = self.context.device
        z, target_latent, labels = (t.to(device) for t in batch)
        output = models["network"](z)[0]
        latent, dice = self._losses([output], target_latent, labels, 1)
        predicted, reference = decoded_probabilities(self.autoencoder.decode(output), self.num_classes).argmax(1), labels[:, 0].long()
        counts = np.zeros((3, self.num_classes - 1))
        for value in range(1, self.num_classes):
            p, r = predicted == value, reference == value
            counts[:, value - 1] = [(p & r).sum().item(), (p & ~r).sum().item(), (~p & r).sum().item()]
        return float((latent + dice).item()), counts

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        tp, fp, fn = totals
        dices = [float(2 * t / (2 * t + f + n)) if 2 * t + f + n > 0 else 0.0 for t, f, n in zip(tp, fp, fn)]
        return float(np.mean(dices)), {"pseudo_dice": [round(d, 4) for d in dices]}

    def final_validation(self) -> dict:
        """Predict the held-out cases from their raw images at their own size, then Dice/NSD/HD95."""
        import time

        from medseg.data.cases import load_case_images
        from medseg.data.layout import list_cases, load_dataset_description
        from medseg.evaluation.report import evaluate_folder, write_report
        from medseg.io import write_image

        context, folder = self.context, self.context.model_folder
        predictor = LatentPredictor(folder, [LatentGraph(self.autoencoder, self.network, self.num_classes)], context.device)
        output = context.fold_folder / "validation"
        output.mkdir(exist_ok=True)
        ending = folder.info.file_ending
        held_out = set(context.val_cases)
        description = context.description or load_dataset_description(folder.raw_folder)
        cases = [c for c in list_cases(description, "Tr")[0] if c.case_id in held_out]
        started = time.perf_counter()
        for case in cases:
            write_image(predictor.predict_image(load_case_images(case), case_id=case.case_id).segmentation, output / f"{case.case_id}{ending}")
        seconds = time.perf_counter() - started
        context.log(f"validation: predicted {len(cases)} held-out cases in {seconds:.1f} s")
        report = evaluate_folder(output, folder.reference_labels, folder.info.labels, ending, case_ids=sorted(held_out))
        report["prediction_seconds_per_case"] = round(seconds / max(len(cases), 1), 3)
        write_report(output / "summary.json", report)
        return report


register_task(
    Task(
        name=TASK,
        summary="GMS: segmentation in a frozen autoencoder's latent space (KL or TAESD-family; 1 to 7 labels; latent MSE + Dice through the decoder)",
        dataset_types=("segmentation",),
        fingerprint=segmentation.fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=masked_pretraining.preprocessed_cases,
        start_run=LatentSegmentationRun,
        model_info=lambda configuration: {"mirror_axes": []},
        predictor=load_latent_predictor,
        capabilities=frozenset({LABEL_MAPS, CROSSVAL, LATENT_SPACE, ONNX, RAY}),
        onnx_graph=latent_onnx_graph,
        crossval=segmentation.crossval,
        report_rows=segmentation.report_rows,
        report_score=segmentation.report_score,
    )
)
