"""GMS's latent mapping network: an image's autoencoder latent -> its mask's latent, at one resolution.

As the GMS paper describes it: no spatial downsampling (so nothing of the small latent grid is
lost), residual blocks each followed by single-head self-attention over the grid positions, the
width growing then shrinking again along a U of concatenated skips, and deep supervision: every
decoder-side block predicts the mask latent too. With width 32 and multipliers (1, 2, 4, 4) it has
about 1.5 M parameters. Trained by the latent_segmentation task (medseg.tasks.latent_segmentation)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.registry import ModelFamily, register_model

GMS_DEFAULTS = {"latent_channels": 4, "width": 32, "multipliers": [1, 2, 4, 4], "groups": 16}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, channels), channels, eps=1e-6)


class _ResidualAttentionBlock(nn.Module):
    """(B, C_in, h, w) -> (B, C_out, h, w): norm-PReLU-conv twice with a skip, then self-attention."""

    def __init__(self, channels_in: int, channels_out: int, groups: int):
        super().__init__()
        self.norm1, self.act1 = _norm(channels_in, groups), nn.PReLU()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2, self.act2 = _norm(channels_out, groups), nn.PReLU()
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1, bias=False) if channels_in != channels_out else nn.Identity()
        self.attention_norm = _norm(channels_out, groups)
        self.qkv = nn.Conv2d(channels_out, 3 * channels_out, 1)
        self.project = nn.Conv2d(channels_out, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act1(self.norm1(x)))
        h = self.skip(x) + self.conv2(self.act2(self.norm2(h)))
        batch, channels, height, width = h.shape
        q, k, v = self.qkv(self.attention_norm(h)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (B, hw, C)
        attended = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return h + self.project(attended.transpose(1, 2).reshape(batch, channels, height, width))


class GMSMapper(nn.Module):
    """(B, latent, h, w) -> list of (B, latent, h, w) mask latents, finest first (deep supervision),
    or the final one alone without deep supervision."""

    def __init__(self, latent_channels: int = 4, width: int = 32, multipliers: Sequence[int] = (1, 2, 4, 4), groups: int = 16, deep_supervision: bool = False):
        super().__init__()
        self.deep_supervision = deep_supervision
        widths = [width * m for m in multipliers]
        self.stem = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.encoder = nn.ModuleList()
        previous = width
        for channels in widths:
            self.encoder.append(_ResidualAttentionBlock(previous, channels, groups))
            previous = channels
        # decoder: block i joins encoder output i (or the stem's) with the previous decoder output
        skips = list(reversed([width, *widths[:-1]]))  # what each decoder block joins: e_{n-1}, ..., e_1, the stem
        self.decoder, self.heads = nn.ModuleList(), nn.ModuleList()
        for skip, channels in zip(skips, skips):  # each block returns to its skip's width
            self.decoder.append(_ResidualAttentionBlock(skip + previous, channels, groups))
            self.heads.append(nn.Sequential(_norm(channels, groups), nn.SiLU(), nn.Conv2d(channels, latent_channels, 3, padding=1, bias=False)))
            previous = channels

    def forward(self, z: torch.Tensor):
        features = [self.stem(z)]
        for block in self.encoder:
            features.append(block(features[-1]))
        x, outputs = features.pop(), []
        for block, head in zip(self.decoder, self.heads):
            x = block(torch.cat([features.pop(), x], dim=1))
            outputs.append(head(x))
        outputs.reverse()  # finest (last decoder block) first, as the other families' deep supervision
        return outputs if self.deep_supervision else outputs[0]


def _build(in_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> GMSMapper:
    options = {**GMS_DEFAULTS, **kwargs}
    return GMSMapper(options["latent_channels"], options["width"], options["multipliers"], options["groups"], deep_supervision)


register_model(
    ModelFamily(
        name="gms",
        build=_build,
        task_type="latent_segmentation",
        dims=(2,),
        summary="GMS: maps an image's latent to its mask's latent in a frozen KL autoencoder (no downsampling, residual blocks with self-attention, deep supervision)",
        options=("width", "multipliers", "groups"),
    )
)
