"""U-Mamba (2D/3D): the plain U-Net with Mamba layers, in two placements.

- ``umamba_bot``: a Mamba layer on the deepest features (the bottleneck).
- ``umamba_enc``: a Mamba layer after every encoder stage. Where a stage has fewer positions than
  channels (deep stages of small patches), the layer scans the channels instead, with the positions
  as features, as the published U-Mamba Enc does; this needs the patch size, stored in the plans.

Convolutions keep the local detail; a Mamba layer mixes information across the whole (downsampled)
image along the flattened sequence of positions, at a cost linear in their number. Planned like
the U-Net (same topology rules); the Mamba settings are stored in the plans with the rest of the
architecture."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from medseg.models import unet
from medseg.models.mamba_layer import MambaLayer
from medseg.models.registry import ModelFamily, register_model, stage_sizes

MAMBA_DEFAULTS = {"mamba_state": 16, "mamba_expand": 2, "mamba_conv": 4}


def build_umamba_bot(
    in_channels: int, num_classes: int, deep_supervision: bool = False,
    mamba_state: int = 16, mamba_expand: int = 2, mamba_conv: int = 4, **unet_kwargs,
) -> unet.PlainUNet:
    layer = MambaLayer(unet_kwargs["features_per_stage"][-1], state=mamba_state, conv_width=mamba_conv, expand=mamba_expand)
    return unet.PlainUNet(in_channels, num_classes, deep_supervision=deep_supervision, bottleneck=layer, **unet_kwargs)


class ChannelTokenMamba(nn.Module):
    """A Mamba layer that scans a stage's channels, each a token of its ``positions`` values."""

    def __init__(self, positions: int, state: int, conv_width: int, expand: int):
        super().__init__()
        self.layer = MambaLayer(positions, state=state, conv_width=conv_width, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *spatial) -> (B, C, *spatial); the layer sees (B, positions, C)."""
        return self.layer(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)


def build_umamba_enc(
    in_channels: int, num_classes: int, deep_supervision: bool = False,
    mamba_state: int = 16, mamba_expand: int = 2, mamba_conv: int = 4, patch_size: list[int] | None = None, **unet_kwargs,
) -> unet.PlainUNet:
    if patch_size is None:
        raise ValueError("umamba_enc needs the planned patch_size (stages with fewer positions than channels scan channels)")
    mixers = []
    for channels, size in zip(unet_kwargs["features_per_stage"], stage_sizes(patch_size, unet_kwargs["strides"])):
        positions = int(np.prod(size, dtype=np.int64))
        if positions < channels:
            mixers.append(ChannelTokenMamba(positions, mamba_state, mamba_conv, mamba_expand))
        else:
            mixers.append(MambaLayer(channels, state=mamba_state, conv_width=mamba_conv, expand=mamba_expand))
    return unet.PlainUNet(in_channels, num_classes, deep_supervision=deep_supervision, stage_mixers=mixers, **unet_kwargs)


def architecture_for_patch(spacing, patch_size, base_features: int = unet.BASE_FEATURES, max_features: int | None = None):
    kwargs, topology = unet.architecture_for_patch(spacing, patch_size, base_features, max_features)
    return {**kwargs, **MAMBA_DEFAULTS}, topology


def enc_architecture_for_patch(spacing, patch_size, base_features: int = unet.BASE_FEATURES, max_features: int | None = None):
    kwargs, topology = architecture_for_patch(spacing, patch_size, base_features, max_features)
    return {**kwargs, "patch_size": list(topology.patch_size)}, topology


def _layers(patch_size, kwargs: dict) -> list[tuple[int, int]]:
    """(tokens, features per token) of each Mamba layer: the bottleneck's, or every stage's (Enc)."""
    sizes = stage_sizes(patch_size, kwargs["strides"])
    stages = range(len(sizes)) if "patch_size" in kwargs else [len(sizes) - 1]
    layers = []
    for stage in stages:
        positions, channels = int(np.prod(sizes[stage], dtype=np.int64)), kwargs["features_per_stage"][stage]
        layers.append((channels, positions) if "patch_size" in kwargs and positions < channels else (positions, channels))
    return layers


def _unet_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in MAMBA_DEFAULTS and k != "patch_size"}


def feature_map_size(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> int:
    mamba = 0
    for tokens, channels in _layers(patch_size, kwargs):
        inner, rank, state = kwargs["mamba_expand"] * channels, math.ceil(channels / 16), kwargs["mamba_state"]
        # norm + residual (2C), x/z, conv, activation, scan output (~4E), delta and B/C per token;
        # the scan kernels never hold (E, N) states for every token
        mamba += tokens * (2 * channels + 4 * inner + inner + rank + 2 * state)
    return unet.feature_map_size(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + mamba


def flops_per_sample(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> float:
    mamba = 0.0
    for tokens, channels in _layers(patch_size, kwargs):
        inner, rank, state = kwargs["mamba_expand"] * channels, math.ceil(channels / 16), kwargs["mamba_state"]
        projections = 2 * tokens * (channels * 2 * inner + inner * (rank + 2 * state) + rank * inner + inner * channels)
        mamba += projections + 2 * tokens * inner * kwargs["mamba_conv"] + 9 * tokens * inner * state
    return unet.flops_per_sample(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + mamba


register_model(
    ModelFamily(
        name="umamba_bot",
        build=build_umamba_bot,
        task_type="segmentation",
        dims=(2, 3),
        summary="U-Mamba Bot: plain U-Net + a Mamba (selective-scan) layer on the bottleneck features",
        kernels=("selective_scan",),
        options=tuple(MAMBA_DEFAULTS),
        architecture_for_patch=architecture_for_patch,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
register_model(
    ModelFamily(
        name="umamba_enc",
        build=build_umamba_enc,
        task_type="segmentation",
        dims=(2, 3),
        summary="U-Mamba Enc: plain U-Net + a Mamba (selective-scan) layer after every encoder stage",
        kernels=("selective_scan",),
        options=tuple(MAMBA_DEFAULTS),
        architecture_for_patch=enc_architecture_for_patch,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
