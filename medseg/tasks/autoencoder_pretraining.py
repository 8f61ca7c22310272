"""The autoencoder-pretraining task: a small KL autoencoder learns a dataset's images (labels unused),
for GMS to segment in its latent space where no pretrained autoencoder can be had.

``medseg pretrain-ae --dataset NAME [--images DIR ...]`` plans one square side (128 on a CPU, 256 on
a GPU; never above the images' median side) and the width (half on a CPU), prepares the training images (and the unlabelled test
images and any extra image folders), and trains on all of them (fold "all"). A quarter of every
batch is random blob masks drawn as 3-channel images: GMS encodes masks with the same autoencoder,
so it must reconstruct such shapes, and drawing them keeps the dataset's labels out of it. After
every epoch the run writes ``autoencoder/`` (diffusers' AutoencoderKL layout, its latent scaling
set to unit variance on the training images) and a reconstruction PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg.atomic import atomic_path
from medseg.data.autoencoder_images import autoencoder_image, mask_as_image, random_blob_masks
from medseg.errors import DatasetError, MedsegError
from medseg.preprocessing import images2d
from medseg.tasks import masked_pretraining, segmentation
from medseg.tasks.capabilities import PRETRAINS
from medseg.tasks.registry import PlanRequest, RunContext, Task, register_task
from medseg.training import optimizers
from medseg.training.schedules import warmup_then_cosine

TASK = "autoencoder_pretraining"
CPU_SIDE, GPU_SIDE, MIN_SIDE = 128, 256, 32
CPU_AUTOENCODER = {"block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8}  # 1.0 M parameters


def square_plans(fingerprint_file, description, request: PlanRequest, side: int, batch: int, architecture: dict, training: dict, labels: dict):
    """Plans with one "2d" configuration at ``side`` x ``side``: what both autoencoder tasks train at."""
    from medseg.planning.fingerprint import Fingerprint
    from medseg.planning.plans import ConfigurationPlan, Plans

    fingerprint = Fingerprint.load(fingerprint_file)
    median_shape = [int(s) for s in np.median(np.array(fingerprint.shapes_before_crop), axis=0)]
    spacing = [float(s) for s in np.median(np.array(fingerprint.spacings), axis=0)]
    configuration = ConfigurationPlan(
        name="2d", ndim=2, spacing=spacing, median_shape=median_shape, patch_size=[side, side], batch_size=batch, batch_dice=False,
        normalization=[{"scheme": "autoencoder_range", "use_mask": False, "properties": {}} for _ in range(description.num_channels)],
        architecture=architecture, resampling={"image": "bilinear, antialiased", "label": "nearest"}, data_identifier=f"{request.plans_name}_2d",
        augmentation={}, training=training,
    )
    planner = {"mode": "memory" if request.memory_gb is not None or torch.cuda.is_available() else "time", "model": architecture["name"]}
    return Plans(
        dataset_name=fingerprint.dataset_name, plans_name=request.plans_name, planner=planner, transpose_forward=[0, 1], transpose_backward=[0, 1],
        original_median_spacing=spacing, original_median_shape=median_shape, labels=labels, channel_names=list(fingerprint.channel_names),
        foreground_intensity_properties_per_channel=fingerprint.foreground_intensity_properties_per_channel, configurations={"2d": configuration},
    )


def planned_side(fingerprint_file, request: PlanRequest, family: str) -> int:
    """The square side: the setting, else 128 on a CPU / 256 on a GPU, at most the median image side;
    a multiple of 8 (the autoencoder's downsampling)."""
    from medseg.planning.fingerprint import Fingerprint

    fingerprint = Fingerprint.load(fingerprint_file)
    if fingerprint.ndim != 2:
        raise MedsegError(f"{family} is 2D; the dataset holds {fingerprint.ndim}D images")
    settings = {**(request.preset or {}), **(request.settings or {})}  # a preset's input_size (gms_paper), or the task's own
    wanted = settings.get("input_size") or (GPU_SIDE if request.memory_gb is not None or torch.cuda.is_available() else CPU_SIDE)
    median_side = int(min(np.median(np.array(fingerprint.shapes_before_crop), axis=0)))
    return max(MIN_SIDE, min(int(wanted), median_side) // 8 * 8)


def plan(fingerprint_file, description, request: PlanRequest):
    side = planned_side(fingerprint_file, request, request.model)
    settings = request.settings or {}
    training = {
        "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.0, "warmup_fraction": 0.02, "kl_weight": 1e-4, "mask_fraction": 0.25,
        "include_test": bool(settings.get("include_test", True)), "extra_images": [str(Path(p).resolve()) for p in settings.get("extra_images", [])],
    }
    on_gpu = request.memory_gb is not None or torch.cuda.is_available()
    # on a CPU half the width (a quarter of the work) and half the batch: the full one took 5.5 s a step at 128x128 x 16
    # on 2 cores (60 steps in 6 minutes), far too few to learn anything
    kwargs = {} if on_gpu else dict(CPU_AUTOENCODER)
    architecture = {"name": request.model, "kwargs": {**kwargs, **dict(request.model_options or {})}}
    return square_plans(fingerprint_file, description, request, side, 16 if on_gpu else 8, architecture, training, {})


# ------------------------------------------------------------------------------------- preprocess
def signature(configuration, kind: str) -> dict:
    return {"side": configuration.patch_size[0], "kind": kind, "extra_images": configuration.training.get("extra_images", []), "version": 1}


def write_case(target: Path, image: np.ndarray, mask: np.ndarray | None = None) -> None:
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, image=image.astype(np.float16), **({"mask": mask} if mask is not None else {}))


def _prepare_image_file(job) -> str | None:
    source, target, side = job
    from medseg.data.cases import load_case_images
    from medseg.io import read_image

    try:
        array = load_case_images(source).array if hasattr(source, "images") else read_image(source).array
        write_case(target, autoencoder_image(array, side, str(getattr(source, "images", [source])[0])))
    except MedsegError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - named, and the others go on
        return f"{getattr(source, 'images', [source])[0]}: unreadable ({type(error).__name__}: {error})"
    return None


def preprocess(description, plans, configuration, folder: Path, workers, progress) -> tuple[int, int]:
    from medseg.parallel import map_parallel

    images2d.fresh_folder(folder, signature(configuration, TASK))
    side = configuration.patch_size[0]
    targets = images2d.case_targets(description, folder, bool(configuration.training.get("include_test")))
    targets += images2d.extra_targets(folder, configuration.training.get("extra_images", []))
    jobs = [(source, target, side) for source, target in targets if not target.is_file()]
    errors = [e for e in map_parallel(_prepare_image_file, jobs, workers, progress) if e]
    if errors:
        raise DatasetError(f"{len(errors)} image(s) could not be prepared: " + "; ".join(errors[:5]))
    return len(jobs), len(targets) - len(jobs)


# ------------------------------------------------------------------------------------- training
class AutoencoderPretrainingRun:
    score_name, score_label = "neg_l1", "-L1"

    def __init__(self, context: RunContext):
        from medseg.models.registry import build_model

        self.context = context
        configuration, options = context.configuration, context.options
        self.training = configuration.training
        if getattr(options, "pretrained", None):
            raise MedsegError("--pretrained is not used by autoencoder pretraining (it starts from scratch)")
        self.network = build_model(configuration.architecture, 3, 1)
        self.modules = {"network": self.network}
        self.learning_rate = options.learning_rate or self.training["learning_rate"]
        self.optimizers = {"network": torch.optim.AdamW(self.network.parameters(), self.learning_rate, weight_decay=self.training["weight_decay"])}
        self.schedule = warmup_then_cosine(self.training.get("warmup_fraction", 0.02))
        self.gradient_clip = optimizers.ADAMW_GRADIENT_CLIP
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        self.side = configuration.patch_size[0]

    def describe(self) -> str:
        parameters = sum(p.numel() for p in self.network.parameters()) / 1e6
        return (
            f"pretraining kl_autoencoder ({parameters:.1f} M parameters, downsampling {self.network.downsampling}, "
            f"{self.network.latent_channels} latent channels) at {self.side}x{self.side}, batch {self.batch_size * self.context.world_size}, adamw lr {self.learning_rate:g}"
        )

    def batches(self, split: str, seed: int, background: bool):
        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        images = images2d.load_images(self.context.data_folder, cases)
        generator = torch.Generator().manual_seed(seed)
        masks = round(self.batch_size * self.training.get("mask_fraction", 0.25))
        while True:
            batch = images[torch.randint(len(cases), (self.batch_size,), generator=generator)].float()
            if split == "train":
                flips = torch.rand(2, generator=generator)
                batch = torch.flip(batch, [3]) if flips[0] < 0.5 else batch
                batch = torch.flip(batch, [2]) if flips[1] < 0.5 else batch
            if masks:
                batch[:masks] = mask_as_image(random_blob_masks(masks, self.side, generator))
            yield batch

    def _loss(self, network, batch: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        reconstruction, mean, logvar = network(batch, sample=sample)
        l1 = (reconstruction - batch).abs().mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return l1 + self.training.get("kl_weight", 1e-4) * kl, l1

    def batch_loss(self, batch, models) -> torch.Tensor:
        return self._loss(models["network"], batch.to(self.context.device, non_blocking=True), sample=True)[0]

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        loss, l1 = self._loss(models["network"], batch.to(self.context.device), sample=False)
        return float(loss.item()), np.array([float(l1.item()), 1.0])

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        l1 = float(totals[0] / max(totals[1], 1.0))
        return -l1, {"l1": round(l1, 5)}

    def end_of_epoch(self, epoch: int) -> None:
        """The autoencoder as it is now (latents scaled to unit variance) and a reconstruction PNG."""
        from medseg.models.kl_autoencoder import save_autoencoder

        folder = self.context.fold_folder
        images = images2d.load_images(self.context.data_folder, self.context.train_cases[:64]).float().to(self.context.device)
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            mean, _ = self.network.encode(images)
            self.network.config["scaling_factor"] = float(self.network.config["scaling_factor"] / max(float(mean.std()), 1e-6))
            shown = torch.cat([images[:3], mask_as_image(random_blob_masks(1, self.side, torch.Generator().manual_seed(epoch)).to(images.device))])
            reconstructed = self.network(shown, sample=False)[0]
        self.network.train(was_training)
        save_autoencoder(self.network, folder / "autoencoder")
        reconstruction_png(folder / "reconstructions" / f"epoch_{epoch:04d}.png", shown.cpu(), reconstructed.cpu())

    def final_validation(self) -> dict | None:
        return None


def reconstruction_png(path: Path, images: torch.Tensor, reconstructed: torch.Tensor) -> None:
    """One row per image: the input | its reconstruction; images (B, 3, H, W) in [-1, 1]."""
    from PIL import Image

    rows = torch.cat([torch.cat([a, b], dim=2) for a, b in zip(images, reconstructed)], dim=1)  # (3, B*H, 2W)
    canvas = ((rows.clamp(-1, 1) + 1) * 127.5).byte().permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        Image.fromarray(np.ascontiguousarray(canvas)).save(temporary, format="PNG")


def instead(folder: Path) -> str:
    return (
        "it encodes images, it does not segment. "
        f"Train GMS in its latent space: `medseg plan-and-train --model gms --autoencoder {folder / 'fold_all' / 'autoencoder'}`"
    )


register_task(
    Task(
        name=TASK,
        summary="KL autoencoder pretraining on a dataset's images (labels unused) and random masks; GMS segments in its latent space",
        dataset_types=("segmentation", "classification"),
        fingerprint=segmentation.fingerprint,
        plan=plan,
        preprocess=preprocess,
        preprocessed_cases=masked_pretraining.preprocessed_cases,  # every image file, test and extra ones too
        start_run=AutoencoderPretrainingRun,
        model_info=lambda configuration: {},
        predictor=None,  # its model feeds another task's training (see instead)
        capabilities=frozenset({PRETRAINS}),
        instead=instead,
        report_rows=lambda report: (["metric", "value"], [["L1", str(report.get("l1"))]]),
        report_score=lambda report: -float(report.get("l1") or 0.0),
    )
)
