"""xLSTM-UNet (2D/3D): the plain U-Net with Vision-LSTM (mLSTM) layers, in two placements.

- ``xlstm_unet_bot``: ``vil_blocks`` ViL layers on the deepest features (the bottleneck).
- ``xlstm_unet_enc``: one ViL layer after each encoder stage listed in ``vil_stages`` (by default
  every stage but the full-resolution one, as the published Enc model does).

Traversal: ViL alternates the direction from block to block (forward, backward, ...); the published
xLSTM-UNet code scans every layer forward. ``vil_directions`` = "alternate" (default), "forward"
(the published behaviour) or "axes": forward, backward, then the same with each other axis running
fastest (in 3D: across rows, then across slices), so that successive layers see every axis as a
neighbour in the sequence. ``vil_conv`` = "causal1d" (ViL v1's conv along the traversal) or "map"
(ViL v2's depthwise conv on the feature map). Planned like the U-Net (same topology rules); the
ViL settings are stored with the rest of the architecture in the plans."""

from __future__ import annotations

import numpy as np
from torch import nn

from medseg.models import unet
from medseg.models.registry import ModelFamily, register_model, stage_sizes
from medseg.models.vil_layer import ViLLayer

VIL_DEFAULTS = {"vil_heads": 4, "vil_expand": 2, "vil_conv": "causal1d", "vil_directions": "alternate"}
MLSTM_CHUNK = 64  # the chunkwise kernel's chunk: its (chunk, chunk) tiles per head cost memory and FLOPs


DIRECTION_CYCLES = ("alternate", "forward", "axes")


def direction(index: int, directions: str, ndim: int) -> str:
    """The scan order (medseg_kernels.scan_orders name) of the index-th ViL layer."""
    if directions not in DIRECTION_CYCLES:
        raise ValueError(f"vil_directions must be one of {DIRECTION_CYCLES}, got {directions!r}")
    if directions == "forward":
        return "forward"
    backward = index % 2 == 1
    if directions == "alternate":
        return "backward" if backward else "forward"
    axis = ndim - 1 - (index // 2) % ndim  # the last axis (stored layout) first, then the others
    return f"axis{axis}_backward" if backward else f"axis{axis}"


def _vil(channels: int, ndim: int, index: int, settings: dict) -> ViLLayer:
    return ViLLayer(
        channels, ndim, heads=settings["vil_heads"], expand=settings["vil_expand"], conv=settings["vil_conv"],
        direction=direction(index, settings["vil_directions"], ndim),
    )


def _split(kwargs: dict, own: tuple[str, ...]) -> tuple[dict, dict]:
    """(ViL settings, U-Net kwargs)."""
    settings = {**VIL_DEFAULTS, **{k: v for k, v in kwargs.items() if k in VIL_DEFAULTS or k in own}}
    return settings, {k: v for k, v in kwargs.items() if k not in VIL_DEFAULTS and k not in own}


def build_xlstm_unet_bot(in_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> unet.PlainUNet:
    settings, unet_kwargs = _split(kwargs, ("vil_blocks",))
    ndim = len(unet_kwargs["kernel_sizes"][0])
    channels = unet_kwargs["features_per_stage"][-1]
    layers = nn.Sequential(*(_vil(channels, ndim, b, settings) for b in range(settings.get("vil_blocks", 2))))
    return unet.PlainUNet(in_channels, num_classes, deep_supervision=deep_supervision, bottleneck=layers, **unet_kwargs)


def build_xlstm_unet_enc(in_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> unet.PlainUNet:
    settings, unet_kwargs = _split(kwargs, ("vil_stages",))
    ndim = len(unet_kwargs["kernel_sizes"][0])
    features = unet_kwargs["features_per_stage"]
    stages = settings.get("vil_stages", list(range(1, len(features))))
    mixers = [_vil(features[s], ndim, stages.index(s), settings) if s in stages else None for s in range(len(features))]
    return unet.PlainUNet(in_channels, num_classes, deep_supervision=deep_supervision, stage_mixers=mixers, **unet_kwargs)


# ------------------------------------------------------------------------------------ planner hooks
# The planner prices FLOPs at the rate it measured on convolutions. A ViL layer is two kinds of
# work: dense matmuls (projections, chunk tiles), which run several times faster than that rate, and
# elementwise passes over its activations (norms, gates, exponentials, reshapes), which are bound by
# memory and cost more per value than their FLOPs say. Fitted on a 2-core CPU with
# bench/pipeline/planner_accuracy.py (Bot: few tokens, wide channels; Enc: many tokens, narrow).
MATMUL_SPEEDUP = 3.0
ELEMENTWISE_COST = 80.0  # convolution-rate FLOPs per activation value, forward


def vil_cost(tokens: int, channels: int, settings: dict, ndim: int) -> tuple[float, float]:
    """(activations held, forward cost in convolution-rate FLOPs) of one ViL layer over ``tokens`` positions."""
    inner = settings["vil_expand"] * channels
    heads = settings["vil_heads"]
    head_dim = inner / heads
    taps = 4 if settings["vil_conv"] == "causal1d" else 3**ndim
    chunk = min(MLSTM_CHUNK, tokens)
    per_token_activations = 2 * channels + 11 * inner + heads * (chunk + head_dim**2 / chunk)
    matmul_flops = (
        2 * channels * 2 * inner  # up-projection
        + 3 * 2 * inner * head_dim  # head-wise q, k, v
        + 2 * 2 * 3 * inner * heads  # gates
        + 4 * inner * (chunk + head_dim)  # chunkwise mLSTM: intra-chunk tiles and the (d, d) memory
        + 2 * inner * channels  # down-projection
    )
    per_token_cost = matmul_flops / MATMUL_SPEEDUP + 2 * inner * taps + ELEMENTWISE_COST * per_token_activations
    return tokens * per_token_activations, tokens * per_token_cost


def _mixed_stages(kwargs: dict) -> list[tuple[int, int]]:
    """(stage, layers) with ViL layers."""
    stages = len(kwargs["features_per_stage"])
    if "vil_stages" in kwargs:
        return [(s, 1) for s in kwargs["vil_stages"]]
    return [(stages - 1, kwargs.get("vil_blocks", 2))]


def _costs(patch_size, kwargs: dict) -> tuple[float, float]:
    settings, _ = _split(kwargs, ("vil_blocks", "vil_stages"))
    sizes = stage_sizes(patch_size, kwargs["strides"])
    activations = flops = 0.0
    for stage, layers in _mixed_stages(kwargs):
        a, f = vil_cost(int(np.prod(sizes[stage], dtype=np.int64)), kwargs["features_per_stage"][stage], settings, len(patch_size))
        activations, flops = activations + layers * a, flops + layers * f
    return activations, flops


def _unet_kwargs(kwargs: dict) -> dict:
    return _split(kwargs, ("vil_blocks", "vil_stages"))[1]


def feature_map_size(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> int:
    return int(unet.feature_map_size(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + _costs(patch_size, kwargs)[0])


def flops_per_sample(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> float:
    return unet.flops_per_sample(patch_size, in_channels, num_classes, _unet_kwargs(kwargs)) + _costs(patch_size, kwargs)[1]


def bot_architecture(spacing, patch_size, base_features: int = unet.BASE_FEATURES, max_features: int | None = None):
    kwargs, topology = unet.architecture_for_patch(spacing, patch_size, base_features, max_features)
    return {**kwargs, **VIL_DEFAULTS, "vil_blocks": 2}, topology


def enc_architecture(spacing, patch_size, base_features: int = unet.BASE_FEATURES, max_features: int | None = None):
    kwargs, topology = unet.architecture_for_patch(spacing, patch_size, base_features, max_features)
    return {**kwargs, **VIL_DEFAULTS, "vil_stages": list(range(1, len(kwargs["features_per_stage"])))}, topology


register_model(
    ModelFamily(
        name="xlstm_unet_bot",
        build=build_xlstm_unet_bot,
        task_type="segmentation",
        dims=(2, 3),
        summary="xLSTM-UNet Bot: plain U-Net + Vision-LSTM (mLSTM) layers on the bottleneck, traversal alternating per block",
        kernels=("mlstm",),
        options=(*VIL_DEFAULTS, "vil_blocks"),
        architecture_for_patch=bot_architecture,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
register_model(
    ModelFamily(
        name="xlstm_unet_enc",
        build=build_xlstm_unet_enc,
        task_type="segmentation",
        dims=(2, 3),
        summary="xLSTM-UNet Enc: plain U-Net + a Vision-LSTM (mLSTM) layer after every encoder stage but the first",
        kernels=("mlstm",),
        options=(*VIL_DEFAULTS, "vil_stages"),
        architecture_for_patch=enc_architecture,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
