"""The masked-pretraining task: a masked autoencoder learns the dataset's images without labels.

``medseg pretrain --dataset NAME --model mae_vit`` plans like the classifier (the same input side
and patch, so the encoder fits the classifier that fine-tunes it), preprocesses the training images
and, unless ``--no-test-images``, the unlabelled test images too, plus every image under the
``--images`` folders (colour turned to grayscale for a grayscale dataset), and trains on all of
them (fold "all": there is nothing to cross-validate). ``--pretrained ENCODER`` continues from an
encoder (another dataset's pretraining, or an earlier run) with a fresh decoder. Augmentation is MAE's: a random resized crop of 0.5-1.0
of the image (and flips where the images allow them). After every epoch the run writes
``encoder.pt`` (what ``plan-and-train --model vit --pretrained PATH`` loads) and a reconstruction
PNG (masked input | reconstruction | original, a row per image) so a user can watch it learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.tasks import image_plans
from medseg.preprocessing import images2d
from medseg.tasks.capabilities import PRETRAINS
from medseg.tasks.registry import PlanRequest, RunContext, Task, register_task
from medseg.training import optimizers
from medseg.training.schedules import warmup_then_cosine

TASK = "masked_pretraining"
RECONSTRUCTION_IMAGES = 4


def plan(fingerprint_file, description, request: PlanRequest):
    from medseg.training.image_augmentation import augmentation_preset

    sized = image_plans.size_image_plan(fingerprint_file, description, request)
    augmentation = {**augmentation_preset(description.num_channels), "crop_scale": [0.5, 1.0], "rotation_degrees": 0.0, "brightness": 0.0, "contrast": 0.0}
    training = {
        "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "warmup_fraction": 0.05,
        "include_test": bool((request.settings or {}).get("include_test", True)),
        "extra_images": [str(Path(p).resolve()) for p in (request.settings or {}).get("extra_images", [])],
    }
    return image_plans.image_plans(sized, description, request, {}, augmentation, training)


def preprocessed_cases(data_folder: Path, plans, configuration) -> list[str]:
    if not data_folder.is_dir():
        return []
    return sorted(p.stem for p in data_folder.glob("*.npz") if not p.name.startswith("."))


def reconstruction_png(path: Path, images: torch.Tensor, predicted: torch.Tensor, mask: torch.Tensor, patch: int) -> None:
    """images: (B, C, H, W); predicted: (B, N, P) normalised patches; mask: (B, N), 1 = hidden.
    One row per image: the visible patches, the reconstruction (visible patches kept), the original."""
    from PIL import Image

    from medseg.atomic import atomic_path
    from medseg.models.mae import patchify, unpatchify

    b, c, h, w = images.shape
    grid = [h // patch, w // patch]
    target = patchify(images, patch)
    mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden = mask[:, :, None].bool()
    filled = torch.where(hidden, predicted * std + mean, target)  # back from per-patch normalised pixels
    visible = torch.where(hidden, torch.full_like(target, float(images.min())), target)
    rows = []
    for index in range(b):
        panels = [unpatchify(x[index : index + 1], patch, grid, c)[0] for x in (visible, filled, target)]
        strip = torch.cat(panels, dim=2)  # (C, H, 3W)
        low, high = strip.min(), strip.max()
        strip = ((strip - low) / (high - low + 1e-6) * 255).clamp(0, 255).byte()
        rows.append(strip.expand(3, -1, -1) if c == 1 else strip[:3])
    canvas = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    scale = max(1, 128 // h)
    image = Image.fromarray(np.ascontiguousarray(canvas)).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")


class MaskedPretrainingRun:
    score_name, score_label = "neg_masked_loss", "-masked loss"
    mixed_precision = True  # bf16 forward where --precision allows; the masked loss is computed in float32 (MaskedAutoencoder)

    def __init__(self, context: RunContext):
        from medseg.models.registry import build_model

        self.context = context
        configuration, options = context.configuration, context.options
        self.training = configuration.training
        self.network = build_model(configuration.architecture, len(context.plans.channel_names), 1)
        self.modules = {"network": self.network}
        if options.optimizer not in (None, "adamw"):
            raise MedsegError(f"the {TASK} task trains with adamw (got --optimizer {options.optimizer})")
        self.pretrained = getattr(options, "pretrained", None)
        if self.pretrained:  # continue from an encoder (another dataset's, or an earlier run's); the decoder starts fresh
            from medseg.models.mae import load_encoder

            load_encoder(self.network.encoder, Path(self.pretrained), len(context.plans.channel_names), self.network.settings)
        self.learning_rate = options.learning_rate or self.training["learning_rate"]
        groups = optimizers.parameter_groups(self.network, self.training["weight_decay"], 1.0)
        self.optimizers = {"network": torch.optim.AdamW(groups, self.learning_rate, betas=tuple(self.training.get("betas", (0.9, 0.95))))}
        self.batch_size = max(1, (options.batch_size or configuration.batch_size) // context.world_size)
        self.schedule = warmup_then_cosine(self.training.get("warmup_fraction", 0.05))
        self.gradient_clip = optimizers.ADAMW_GRADIENT_CLIP
        self.epoch = 0

    def describe(self) -> str:
        c = self.context.configuration
        return (
            f"pretraining {c.architecture['name']} (mask ratio {self.network.mask_ratio}), input {c.patch_size}, "
            f"batch {self.batch_size * self.context.world_size}, adamw lr {self.learning_rate:g}"
            + (f", continuing from the encoder {self.pretrained}" if self.pretrained else "")
        )

    def batches(self, split: str, seed: int, background: bool):
        from medseg.training.image_augmentation import augment_batch

        cases = self.context.train_cases if split == "train" else (self.context.val_cases or self.context.train_cases)
        images = images2d.load_images(self.context.data_folder, cases)
        generator = torch.Generator().manual_seed(seed)
        while True:
            chosen = torch.randint(len(cases), (self.batch_size,), generator=generator)
            batch = images[chosen].float()
            yield augment_batch(batch, self.context.configuration.augmentation, generator) if split == "train" else batch

    def batch_loss(self, batch, models) -> torch.Tensor:
        """The masked patches' reconstruction loss (the network computes it)."""
        return models["network"](batch.to(self.context.device, non_blocking=True))

    def val_step(self, batch, models) -> tuple[float, np.ndarray]:
        loss = float(models["network"](batch.to(self.context.device)).item())
        return loss, np.array([loss, 1.0])

    def score(self, totals: np.ndarray) -> tuple[float, dict]:
        loss = float(totals[0] / max(totals[1], 1.0))
        return -loss, {"masked_loss": round(loss, 5)}

    def end_of_epoch(self, epoch: int) -> None:
        """The encoder as it is now, and a reconstruction of a few fixed images (main process only)."""
        from medseg.models.mae import save_encoder

        self.epoch = epoch
        folder = self.context.fold_folder
        save_encoder(self.network, folder / "encoder.pt")
        cases = self.context.train_cases[:RECONSTRUCTION_IMAGES]
        images = images2d.load_images(self.context.data_folder, cases).float().to(self.context.device)
        was_training = self.network.training
        self.network.eval()
        with torch.no_grad():
            _, predicted, mask = self.network.reconstruct(images, torch.Generator().manual_seed(0))
        self.network.train(was_training)
        reconstruction_png(folder / "reconstructions" / f"epoch_{epoch:04d}.png", images.cpu(), predicted.float().cpu(), mask.cpu(), self.network.patch)

    def final_validation(self) -> dict | None:
        return None


def instead(folder: Path) -> str:
    return (
        "it reconstructs images, it does not predict. "
        f"Fine-tune a classifier on it: `medseg plan-and-train --model vit --pretrained {folder / 'fold_all' / 'encoder.pt'}`"
    )


register_task(
    Task(
        name=TASK,
        summary="masked autoencoder pretraining on a dataset's images (labels unused); the encoder fine-tunes a ViT classifier",
        dataset_types=("classification", "segmentation"),
        fingerprint=image_plans.fingerprint,
        plan=plan,
        preprocess=images2d.preprocess,
        preprocessed_cases=preprocessed_cases,
        start_run=MaskedPretrainingRun,
        model_info=lambda configuration: {},
        predictor=None,  # its model feeds another task's training (see instead)
        capabilities=frozenset({PRETRAINS}),
        instead=instead,
        report_rows=lambda report: (["metric", "value"], [["masked loss", str(report.get("masked_loss"))]]),
        report_score=lambda report: -float(report.get("masked_loss") or 0.0),
    )
)
