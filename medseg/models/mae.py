"""Masked autoencoder (MAE) on our ViT: the encoder sees a random ``1 - mask_ratio`` of the patches,
a small transformer decoder fills in the rest, and the loss is the mean squared error on the masked
patches of the per-patch normalised pixels (MAE's "norm_pix_loss"). Medical MAE studies found a
0.90 mask ratio best for chest X-rays, the default here. Only the encoder is kept: it is exported as
a plain tensor file (``save_encoder``) that ViT fine-tuning loads (``load_encoder``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medseg.errors import MedsegError
from medseg.models.registry import ModelFamily, register_model
from medseg.models.vit import VIT_DEFAULTS, Block, VisionTransformer, resize_position_embedding

MAE_DEFAULTS = {"mask_ratio": 0.9, "decoder_width": 128, "decoder_depth": 2, "decoder_heads": 4}
ENCODER_FORMAT = "medseg-vit-encoder"
ENCODER_KEYS = ("patch", "width", "depth", "heads", "mlp_ratio")  # what must match between pretraining and fine-tuning


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch * patch * C), patches in row-major order."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: list[int], channels: int) -> torch.Tensor:
    """(B, N, patch * patch * C) -> (B, C, H, W)."""
    b = patches.shape[0]
    x = patches.reshape(b, grid[0], grid[1], patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, grid[0] * patch, grid[1] * patch)


class MaskedAutoencoder(nn.Module):
    def __init__(
        self, in_channels: int, input_size: list[int], patch: int = 16, width: int = 192, depth: int = 12, heads: int = 3,
        mlp_ratio: float = 4.0, drop_path: float = 0.0, mask_ratio: float = 0.9, decoder_width: int = 128, decoder_depth: int = 2,
        decoder_heads: int = 4,
    ):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = VisionTransformer(in_channels, 1, input_size, patch, width, depth, heads, mlp_ratio, drop_path)
        self.encoder.head = nn.Identity()  # pretraining has no classes; fine-tuning adds its own head
        self.patch, self.grid, self.channels, self.mask_ratio = patch, self.encoder.grid, in_channels, mask_ratio
        self.settings = {"input_size": list(input_size), "patch": patch, "width": width, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio}
        tokens = self.grid[0] * self.grid[1]
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + tokens, decoder_width))
        self.decoder_blocks = nn.ModuleList(Block(decoder_width, decoder_heads, mlp_ratio, 0.0) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, patch * patch * in_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def reconstruct(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images: (B, C, H, W) -> (loss, predicted patches (B, N, P), mask (B, N) with 1 = hidden)."""
        tokens = self.encoder.tokens(images)
        b, n, d = tokens.shape
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(b, n, generator=generator).to(images.device) if generator is not None else torch.rand(b, n, device=images.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = tokens.gather(1, shuffle[:, :keep, None].expand(-1, -1, d))
        latent = self.encoder.encode(kept)
        x = self.decoder_embed(latent)
        filled = torch.cat([x[:, 1:], self.mask_token.expand(b, n - keep, -1)], dim=1)
        filled = filled.gather(1, restore[:, :, None].expand(-1, -1, filled.shape[-1]))
        x = torch.cat([x[:, :1], filled], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            x = block(x)
        predicted = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        mask = torch.ones(b, n, device=images.device)
        mask[:, :keep] = 0
        mask = mask.gather(1, restore)
        target = patchify(images, self.patch)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((predicted.float() - target.float()) ** 2).mean(-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, predicted, mask

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, C, H, W) -> the masked-patch loss (a scalar)."""
        return self.reconstruct(images)[0]


def build_mae_vit(in_channels: int, num_classes: int, deep_supervision: bool = False, input_size: list[int] | None = None, **kwargs) -> MaskedAutoencoder:
    if input_size is None:
        raise ValueError("mae_vit needs the planned input_size")
    settings = {**VIT_DEFAULTS, "drop_path": 0.0, **MAE_DEFAULTS, **kwargs}
    return MaskedAutoencoder(in_channels, list(input_size), **settings)


def save_encoder(model: MaskedAutoencoder, path: Path) -> None:
    """The encoder's tensors and shape settings, loadable with ``torch.load(weights_only=True)``."""
    from medseg.training.checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.encoder.state_dict().items() if not k.startswith("head.")}
    save_checkpoint(path, {"format": ENCODER_FORMAT, "version": 1, "in_channels": model.channels, "settings": model.settings, "state": state})


def load_encoder(network: VisionTransformer, path: Path, in_channels: int, settings: dict) -> None:
    """Load a pretrained encoder into ``network`` (planned with ``settings``); position embeddings
    are resized to the network's grid; any other mismatch is an error naming the file."""
    from medseg.training.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"{path}: no such pretrained encoder (made by `medseg pretrain`)")
    content = load_checkpoint(path)
    if not isinstance(content, dict) or content.get("format") != ENCODER_FORMAT:
        raise MedsegError(f"{path}: not a medseg ViT encoder (expected the encoder.pt that `medseg pretrain` writes)")
    theirs = content["settings"]
    ours = {**VIT_DEFAULTS, **settings}
    different = [f"{k} {theirs.get(k)} vs {ours.get(k)}" for k in ENCODER_KEYS if theirs.get(k) != ours.get(k)]
    if content.get("in_channels") != in_channels:
        different.append(f"input channels {content.get('in_channels')} vs {in_channels}")
    if different:
        raise MedsegError(f"{path}: the encoder does not fit this model (pretrained vs planned: {', '.join(different)})")
    state = dict(content["state"])
    state["pos_embed"] = resize_position_embedding(state["pos_embed"], network.grid)
    missing, unexpected = network.load_state_dict(state, strict=False)
    from medseg.models.vit import is_gate_parameter

    if unexpected or any(not (key.startswith("head.") or is_gate_parameter(key)) for key in missing):  # a HAG ViT's gates start fresh
        raise MedsegError(f"{path}: the encoder's tensors do not match the ViT (missing {missing[:3]}, unexpected {unexpected[:3]})")


register_model(
    ModelFamily(
        name="mae_vit",
        build=build_mae_vit,
        task_type="masked_pretraining",
        dims=(2,),
        summary="masked autoencoder pretraining of the ViT encoder (mask ratio 0.90, per-patch normalised pixel loss); fine-tune with vit --pretrained",
        options=(*VIT_DEFAULTS, *MAE_DEFAULTS),
    )
)
