"""The latent-segmentation task (GMS): segment in the latent space of a frozen KL autoencoder.

An image and its mask are both encoded by the autoencoder (the mask as a 3-channel image); the
``gms`` mapper learns image latent -> mask latent. Loss: latent MSE plus Dice on the decoded mask
(gradients through the frozen decoder), on the three finest deep-supervision outputs; the input is
the image latent's mean or, half the time, a sample (mean + sigma * noise). AdamW with warm-up and
cosine decay. Images are resized to the plan's square side (128 on a CPU, 224 on a GPU as GMS) and
the predicted mask back to the image's size. Binary segmentation (one foreground label), as GMS.

The autoencoder: ``--pretrained FOLDER`` (diffusers' AutoencoderKL layout, e.g. Stable Diffusion's
``vae/``), else the one ``medseg pretrain-ae`` trained on the same dataset. It is copied into the
model folder (``autoencoder/``), so the folder predicts on its own; a fold trained with another
autoencoder is refused. Latents of the training cases are computed once per autoencoder and cached
beside the preprocessed images."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.autoencoder_images import autoencoder_image, decoded_mask, mask_as_image, mask_at
from medseg.errors import DatasetError, MedsegError
from medseg.model_card import sha256_of
from medseg.preprocessing import images2d
from medseg.tasks import autoencoder_pretraining as pretraining
from medseg.tasks import masked_pretraining, segmentation
from medseg.tasks.capabilities import CROSSVAL, LABEL_MAPS
from medseg.tasks.registry import PlanRequest, RunContext, Task, register_task
from medseg.training import optimizers
from medseg.training.schedules import warmup_then_cosine

TASK = "latent_segmentation"
GPU_SIDE = 224  # GMS's input size
SUPERVISED_OUTPUTS = 3  # the finest deep-supervision outputs in the loss, as GMS
AUTOENCODER_FOLDER = "autoencoder"


def plan(fingerprint_file, description, request: PlanRequest):
    foreground = {name: value for name, value in description.labels.items() if value != 0}
    if list(foreground.values()) != [1]:
        raise MedsegError(f"{request.model} segments one foreground label (as GMS); {description.folder.name} has {dict(description.labels)}")
    settings = dict(request.settings or {})
    if torch.cuda.is_available() or request.memory_gb is not None:
        settings.setdefault("input_size", GPU_SIDE)
    side = pretraining.planned_side(fingerprint_file, PlanRequest(**{**request.__dict__, "settings": settings}), request.model)
    training = {"optimizer": "adamw", "learning_rate": 2e-3, "weight_decay": 1e-4, "warmup_fraction": 0.05, "latent_input_sampling": 0.5}
    architecture = {"name": request.model, "kwargs": dict(request.model_options or {})}
    return pretraining.square_plans(fingerprint_file, description, request, side, 8, architecture, training, dict(description.labels))


# ------------------------------------------------------------------------------------- preprocess
def _prepare_case(job) -> str | None:
    case, target, side = job
    from medseg.data.cases import load_case_images, load_case_label

    try:
        image = load_case_images(case)
        label = load_case_label(case, image)
        pretraining.write_case(target, autoencoder_image(image.array, side, str(case.images[0])), mask_at(label.array[0] > 0, side))
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
    from medseg.models.kl_autoencoder import CONFIG_FILE, WEIGHTS_FILE, autoencoder_folder, load_autoencoder

    kept = Path(model_folder.path) / AUTOENCODER_FOLDER
    source = Path(pretrained) if pretrained else None
    if (kept / WEIGHTS_FILE).is_file():
        if source is not None:
            incoming = autoencoder_folder(source) / WEIGHTS_FILE  # compared by content, not loaded
            if not incoming.is_file():
                load_autoencoder(source)  # raises, naming what is wrong with the folder
            if sha256_of(incoming) != sha256_of(kept / WEIGHTS_FILE):
                raise MedsegError(f"{model_folder.path}: its folds were trained with the autoencoder in {kept}; --pretrained {source} is another one (use a new plans name or remove the model folder)")
        return load_autoencoder(kept)
    source = source or default_autoencoder(model_folder.raw_folder)
    if not source.exists():
        raise MedsegError(
            f"GMS needs a KL autoencoder: pass --pretrained FOLDER (diffusers' AutoencoderKL layout) or run "
            f"`medseg pretrain-ae --dataset {model_folder.raw_folder.name}` first (looked for {source})"
        )
    loaded = load_autoencoder(source)  # a broken folder is named before anything is copied
    staging = Path(tempfile.mkdtemp(prefix=".autoencoder-", dir=model_folder.path))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(loaded.folder / name, staging / name)
    staging.replace(kept)
    return load_autoencoder(kept)


@torch.no_grad()
def encode_cases(autoencoder, data_folder: Path, case_ids: list[str], device: torch.device, batch: int = 16) -> dict[str, torch.Tensor]:
    """Image latent mean and log-variance, mask latent mean, and the mask, per case (in order); cached
    in ``data_folder`` per autoencoder (its weights' digest) and case list."""
    from medseg.models.kl_autoencoder import WEIGHTS_FILE

    key = hashlib.sha256((sha256_of(autoencoder.folder / WEIGHTS_FILE) + "|" + ",".join(case_ids)).encode()).hexdigest()[:16]
    cache = data_folder / f"latents_{key}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    parts: dict[str, list[torch.Tensor]] = {"image_mean": [], "image_logvar": [], "mask_latent": [], "mask": []}
    for first in range(0, len(case_ids), batch):
        chosen = case_ids[first : first + batch]
        images = images2d.load_images(data_folder, chosen).float().to(device)
        masks = images2d.load_images(data_folder, chosen, "mask").float()[:, None].to(device)
        mean, logvar = autoencoder.encode(images)
        parts["image_mean"].append(mean.cpu())
        parts["image_logvar"].append(logvar.cpu())
        parts["mask_latent"].append(autoencoder.encode(mask_as_image(masks))[0].cpu())
        parts["mask"].append(masks.cpu().to(torch.uint8))
    latents = {name: torch.cat(tensors) for name, tensors in parts.items()}
    from medseg.atomic import atomic_path

    with atomic_path(cache) as temporary:
        torch.save(latents, temporary)
    return latents


def soft_dice_loss(probability: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per image, averaged; probability and mask (B, 1, H, W)."""
    dims = (1, 2, 3)
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
        self.network = build_model(mapper_architecture(configuration, self.autoencoder), 3, 2, deep_supervision=True)
        self.modules = {"network": self.network}
        self.learning_rate = options.learning_rate or self.training["learning_rate"]
        self.optimizers = {"network": torch.optim.AdamW(self.network.parameters(), self.learning_rate, weight_decay=self.training["weight_decay"])}
        self.schedule = warmup_then_cosine(self.training.get("warmup_fraction", 0.05))
        self.gradient_clip = optimizers.ADAMW_GRADIENT_CLIP
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        cases = sorted(set(context.train_cases) | set(context.val_cases))
        self.index = {case: i for i, case in enumerate(cases)}
        self.latents = encode_cases(self.autoencoder, context.data_folder, cases, context.device)

    def describe(self) -> str:
        c, parameters = self.context.configuration, sum(p.numel() for p in self.network.parameters()) / 1e6
        return (
            f"training gms ({parameters:.2f} M parameters) in the latent space of {self.autoencoder.folder} "
            f"({c.patch_size[0]}x{c.patch_size[1]} -> {self.latents['image_mean'].shape[-1]}x{self.latents['image_mean'].shape[-1]}), "
            f"batch {self.batch_size * self.context.world_size}, adamw lr {self.learning_rate:g}"
        )

    def batches(self, split: str, seed: int, background: bool):
        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        rows = torch.tensor([self.index[c] for c in cases])
        generator = torch.Generator().manual_seed(seed)
        sampling = self.training.get("latent_input_sampling", 0.5) if split == "train" else 0.0
        while True:
            chosen = rows[torch.randint(len(rows), (self.batch_size,), generator=generator)]
            mean, logvar = self.latents["image_mean"][chosen], self.latents["image_logvar"][chosen]
            sampled = torch.rand(len(chosen), 1, 1, 1, generator=generator) < sampling
            noise = torch.randn(mean.shape, generator=generator) * torch.exp(0.5 * logvar)
            yield torch.where(sampled, mean + noise, mean), self.latents["mask_latent"][chosen], self.latents["mask"][chosen].float()

    def _losses(self, outputs: list[torch.Tensor], target_latent: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = sum(F.mse_loss(o, target_latent) for o in outputs)
        dice = sum(soft_dice_loss(decoded_mask(self.autoencoder.decode(o)), mask) for o in outputs)
        return latent, dice

    def batch_loss(self, batch, models) -> torch.Tensor:
        """Latent MSE + Dice through the frozen decoder, on the finest outputs."""
        z, target_latent, mask = (t.to(self.context.device, non_blocking=True) for t in batch)
        latent, dice = self._losses(models["network"](z)[:SUPERVISED_OUTPUTS], target_latent, mask)
        return latent + dice

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        """-> loss and the pooled true positive, false positive, false negative pixel counts."""
        device = self.context.device
        z, target_latent, mask = (t.to(device) for t in batch)
        output = models["network"](z)[0]
        latent, dice = self._losses([output], target_latent, mask)
        predicted, reference = decoded_mask(self.autoencoder.decode(output)) > 0.5, mask > 0.5
        counts = [(predicted & reference).sum().item(), (predicted & ~reference).sum().item(), (~predicted & reference).sum().item()]
        return float((latent + dice).item()), np.array(counts, dtype=float)

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        tp, fp, fn = totals
        dice = float(2 * tp / (2 * tp + fp + fn)) if 2 * tp + fp + fn > 0 else 0.0
        return dice, {"pseudo_dice": [round(dice, 4)]}

    def final_validation(self) -> dict:
        """Predict the held-out cases from their raw images at their own size, then Dice/NSD/HD95."""
        import time

        from medseg.data.cases import load_case_images
        from medseg.data.layout import list_cases, load_dataset_description
        from medseg.evaluation.report import evaluate_folder, write_report
        from medseg.io import write_image

        context, folder = self.context, self.context.model_folder
        predictor = LatentPredictor(folder, [self.network], self.autoencoder, context.device)
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


def mapper_architecture(configuration, autoencoder) -> dict:
    """The plan's gms architecture with the autoencoder's latent channels."""
    architecture = configuration.architecture
    return {"name": architecture["name"], "kwargs": {**architecture["kwargs"], "latent_channels": autoencoder.latent_channels}}


# ------------------------------------------------------------------------------------- prediction
class LatentPredictor:
    """A GMS model's predictor (``predict_image``, ``predict_batch``) over the folds' mappers in
    memory, their probabilities averaged: what ``load_latent_predictor`` builds from a model folder
    and what the final validation builds around the mapper it trained."""

    precision = "float32"

    def __init__(self, model_folder, networks: list, autoencoder, device: torch.device, folds=("memory",)):
        self.model_folder, self.folder, self.plans = model_folder, model_folder.path, model_folder.plans
        self.networks = [n.to(device).eval() for n in networks]
        self.autoencoder, self.device, self.folds = autoencoder, device, list(folds)
        self.side = model_folder.configuration.patch_size[0]

    def predict_batch(self, request):
        from medseg.inference.batch import predict_cases

        return predict_cases(self, request)

    @torch.no_grad()
    def foreground_probability(self, image) -> np.ndarray:
        """image: MedicalImage (C, H, W) -> (H, W) foreground probability, the folds averaged."""
        data = torch.from_numpy(autoencoder_image(image.array, self.side))[None].to(self.device)
        mean, _ = self.autoencoder.encode(data)
        probability = sum(decoded_mask(self.autoencoder.decode(self._final(n(mean)))) for n in self.networks) / len(self.networks)
        return F.interpolate(probability.float(), size=list(image.spatial_shape), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()

    @staticmethod
    def _final(output):
        return output[0] if isinstance(output, (list, tuple)) else output

    def predict_image(self, image, probabilities: bool = False, case_id: str = "case"):
        from medseg.tasks.segmentation.inference.predictor import Prediction, check_input
        from medseg.io import MedicalImage

        check_input(image, self.plans, case_id)
        foreground = self.foreground_probability(image)
        labels = (foreground > 0.5).astype(np.uint8)
        segmentation = MedicalImage(labels[None], spacing=image.spacing, origin=image.origin, direction=image.direction, metadata={"source": dict(image.metadata)})
        full = np.stack([1 - foreground, foreground]).astype(np.float32) if probabilities else None
        return Prediction(segmentation, full, dict(image.metadata))


def load_latent_predictor(folder, options) -> LatentPredictor:
    from medseg.models.kl_autoencoder import load_autoencoder
    from medseg.models.registry import build_model

    if options.runtime != "torch":
        raise MedsegError("GMS models run with the torch runtime on the local backend (no ONNX export or Ray yet)")
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    autoencoder = load_autoencoder(folder.path / AUTOENCODER_FOLDER).to(device)
    folds = list(options.folds or folder.folds())
    if not folds:
        raise MedsegError(f"{folder.path}: no trained folds (fold_*/)")
    networks = []
    for fold in folds:
        network = build_model(mapper_architecture(folder.configuration, autoencoder), 3, 2)
        try:
            network.load_state_dict(folder.load_module_states(fold, options.checkpoint)["network"])
        except (KeyError, RuntimeError) as error:
            raise MedsegError(f"{folder.checkpoint_path(fold, options.checkpoint)}: does not fit the gms network of {folder.path / 'plans.json'} ({str(error).splitlines()[0]})") from None
        networks.append(network)
    return LatentPredictor(folder, networks, autoencoder, device, folds)


register_task(
    Task(
        name=TASK,
        summary="GMS: binary segmentation in a frozen KL autoencoder's latent space (latent MSE + Dice through the decoder)",
        dataset_types=("segmentation",),
        fingerprint=segmentation.fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=masked_pretraining.preprocessed_cases,
        start_run=LatentSegmentationRun,
        model_info=lambda configuration: {"mirror_axes": []},
        predictor=load_latent_predictor,
        capabilities=frozenset({LABEL_MAPS, CROSSVAL}),
        crossval=segmentation.crossval,
        report_rows=segmentation.report_rows,
        report_score=segmentation.report_score,
    )
)
