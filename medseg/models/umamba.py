"""U-Mamba Bot (2D/3D): the plain U-Net with a Mamba layer on its deepest features.

Convolutions keep the local detail; the Mamba layer at the bottleneck mixes information across the
whole (downsampled) image along the flattened sequence of positions, at a cost linear in their
number. Planned like the U-Net (same topology rules); the Mamba layer's settings are stored in the
plans with the rest of the architecture."""

from __future__ import annotations

import math

import numpy as np

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


def architecture_for_patch(spacing, patch_size, base_features: int = unet.BASE_FEATURES, max_features: int | None = None):
    kwargs, topology = unet.architecture_for_patch(spacing, patch_size, base_features, max_features)
    return {**kwargs, **MAMBA_DEFAULTS}, topology


def _bottleneck(patch_size, kwargs: dict) -> tuple[int, int, int, int, int]:
    """(positions, channels, inner channels, delta rank, state) of the Mamba layer."""
    positions = int(np.prod(stage_sizes(patch_size, kwargs["strides"])[-1], dtype=np.int64))
    channels = kwargs["features_per_stage"][-1]
    return positions, channels, kwargs["mamba_expand"] * channels, math.ceil(channels / 16), kwargs["mamba_state"]


def _unet_kwargs(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in MAMBA_DEFAULTS}


def feature_map_size(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> int:
    positions, channels, inner, rank, state = _bottleneck(patch_size, kwargs)
    # norm + residual (2C), x/z, conv, activation, scan output (~4E), delta and B/C per position;
    # the scan kernels never hold (E, N) states for every position
    mamba = positions * (2 * channels + 4 * inner + inner + rank + 2 * state)
    return unet.feature_map_size(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + mamba


def flops_per_sample(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> float:
    positions, channels, inner, rank, state = _bottleneck(patch_size, kwargs)
    projections = 2 * positions * (channels * 2 * inner + inner * (rank + 2 * state) + rank * inner + inner * channels)
    mamba = projections + 2 * positions * inner * kwargs["mamba_conv"] + 9 * positions * inner * state
    return unet.flops_per_sample(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + mamba


register_model(
    ModelFamily(
        name="umamba_bot",
        build=build_umamba_bot,
        task_type="segmentation",
        dims=(2, 3),
        summary="U-Mamba Bot: plain U-Net + a Mamba (selective-scan) layer on the bottleneck features",
        kernels=("selective_scan",),
        architecture_for_patch=architecture_for_patch,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
