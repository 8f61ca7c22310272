"""Plain convolutional U-Net (2D/3D) with deep supervision, built from plans.

Stage s of the encoder: ``n_conv_per_stage[s]`` x (conv -> instance norm -> leaky ReLU), the first
conv strided by ``strides[s]``. The decoder upsamples with transposed convs, concatenates the skip,
and applies ``n_conv_per_stage_decoder`` convs; a 1x1 head per decoder stage gives the deep
supervision outputs (highest resolution first)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from medseg.models.registry import ModelFamily, register_model, stage_sizes
from medseg.models.topology import plan_topology

BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}


def _conv(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _padding(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple((k - 1) // 2 for k in kernel)


class ConvNormAct(nn.Sequential):
    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        norm = nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d
        super().__init__(
            _conv(ndim)(in_ch, out_ch, tuple(kernel), tuple(stride), _padding(kernel), bias=True),
            norm(out_ch, eps=1e-5, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


def conv_stage(ndim: int, num_convs: int, in_ch: int, out_ch: int, kernel, stride) -> nn.Sequential:
    layers = [ConvNormAct(ndim, in_ch, out_ch, kernel, stride)]
    layers += [ConvNormAct(ndim, out_ch, out_ch, kernel, [1] * ndim) for _ in range(num_convs - 1)]
    return nn.Sequential(*layers)


class PlainUNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features_per_stage: Sequence[int],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_conv_per_stage: Sequence[int] | None,
        n_conv_per_stage_decoder: Sequence[int],
        deep_supervision: bool = False,
        bottleneck: nn.Module | None = None,
        stage_mixers: Sequence[nn.Module | None] | None = None,
        encoder: Sequence[nn.Module] | None = None,
    ):
        """``bottleneck``: a (B, C, *spatial) -> same module applied to the deepest features (other
        families plug in here: U-Mamba Bot's Mamba layer); identity for the plain U-Net.
        ``stage_mixers``: per encoder stage, a module of the same kind applied to that stage's
        output before it is kept as a skip (the "Enc" families); None where a stage has none.
        ``encoder``: per stage, a module replacing the plain conv stage (the residual encoder), each
        (B, C_in, *spatial) -> (B, features_per_stage[s], *spatial / strides[s]); then
        ``n_conv_per_stage`` is unused."""
        super().__init__()
        ndim = len(kernel_sizes[0])
        self.ndim, self.deep_supervision = ndim, deep_supervision
        if encoder is not None:
            if len(encoder) != len(features_per_stage):
                raise ValueError(f"encoder needs one module per stage ({len(features_per_stage)}), got {len(encoder)}")
            self.encoder = nn.ModuleList(encoder)
        else:
            self.encoder = nn.ModuleList()
            channels = in_channels
            for features, kernel, stride, convs in zip(features_per_stage, kernel_sizes, strides, n_conv_per_stage):
                self.encoder.append(conv_stage(ndim, convs, channels, features, kernel, stride))
                channels = features
        transpose = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        self.upsample, self.decoder, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        num_stages = len(features_per_stage)
        for level in range(num_stages - 2, -1, -1):  # from just above the bottleneck up to full resolution
            below, skip = features_per_stage[level + 1], features_per_stage[level]
            stride = tuple(strides[level + 1])
            self.upsample.append(transpose(below, skip, stride, stride, bias=True))
            convs = n_conv_per_stage_decoder[level]
            self.decoder.append(conv_stage(ndim, convs, 2 * skip, skip, kernel_sizes[level], [1] * ndim))
            self.heads.append(_conv(ndim)(skip, num_classes, 1, 1, 0, bias=True))
        self.apply(_init_he)
        self.bottleneck = bottleneck if bottleneck is not None else nn.Identity()
        mixers = list(stage_mixers) if stage_mixers is not None else [None] * num_stages
        if len(mixers) != num_stages:
            raise ValueError(f"stage_mixers needs one entry per encoder stage ({num_stages}), got {len(mixers)}")
        self.stage_mixers = nn.ModuleList(m if m is not None else nn.Identity() for m in mixers)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x: (B, C, *spatial) -> logits (B, K, *spatial); with deep supervision a list, full resolution first."""
        skips = []
        for stage, mixer in zip(self.encoder, self.stage_mixers):
            x = mixer(stage(x))
            skips.append(x)
        outputs = []
        x = skips[-1] = self.bottleneck(skips[-1])
        for index, (up, stage, head) in enumerate(zip(self.upsample, self.decoder, self.heads)):
            x = stage(torch.cat((up(x), skips[-(index + 2)]), dim=1))
            if self.deep_supervision or index == len(self.decoder) - 1:
                outputs.append(head(x))
        outputs.reverse()
        return outputs if self.deep_supervision else outputs[0]


def _init_he(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_unet(in_channels: int, num_classes: int, deep_supervision: bool = False, **kwargs) -> PlainUNet:
    return PlainUNet(in_channels, num_classes, deep_supervision=deep_supervision, **kwargs)


# ------------------------------------------------------------------------------------ planner hooks
def architecture_for_patch(spacing, patch_size, base_features: int = BASE_FEATURES, max_features: int | None = None):
    """U-Net kwargs for a patch at a spacing, with the (possibly rounded-up) patch size."""
    ndim = len(spacing)
    topology = plan_topology(spacing, patch_size)
    cap = max_features or MAX_FEATURES[ndim]
    stages = topology.num_stages
    kwargs = {
        "features_per_stage": [min(cap, base_features * 2**i) for i in range(stages)],
        "kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "strides": [list(s) for s in topology.strides],
        "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
    }
    return kwargs, topology


def feature_map_size(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> int:
    """Activations held for one sample (the nnU-Net VRAM proxy, without deep-supervision heads)."""
    features, strides = kwargs["features_per_stage"], kwargs["strides"]
    sizes = stage_sizes(patch_size, strides)
    total = 0
    for features_s, convs, size in zip(features, kwargs["n_conv_per_stage"], sizes):
        total += convs * features_s * int(np.prod(size, dtype=np.int64))
    return total + decoder_feature_map_size(sizes, num_classes, kwargs)


def decoder_feature_map_size(sizes: list[list[int]], num_classes: int, kwargs: dict) -> int:
    """The decoder's share of ``feature_map_size`` (``sizes``: each stage's spatial size)."""
    features, total = kwargs["features_per_stage"], 0
    for level in range(len(features) - 2, -1, -1):
        voxels = int(np.prod(sizes[level], dtype=np.int64))
        total += kwargs["n_conv_per_stage_decoder"][level] * features[level] * voxels  # convs
        total += features[level] * voxels  # transposed conv output
    total += num_classes * int(np.prod(sizes[0], dtype=np.int64))  # final head
    return total


def flops_per_sample(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> float:
    """Forward multiply-adds x 2 of one sample: the time model for CPU planning."""
    features, kernels, strides = kwargs["features_per_stage"], kwargs["kernel_sizes"], kwargs["strides"]
    sizes = stage_sizes(patch_size, strides)
    flops, channels = 0.0, in_channels
    for level, (features_s, kernel, size) in enumerate(zip(features, kernels, sizes)):
        voxels, taps = float(np.prod(size)), float(np.prod(kernel))
        for conv in range(kwargs["n_conv_per_stage"][level]):
            flops += 2 * voxels * taps * (channels if conv == 0 else features_s) * features_s
        channels = features_s
    return flops + decoder_flops(sizes, num_classes, kwargs)


def decoder_flops(sizes: list[list[int]], num_classes: int, kwargs: dict) -> float:
    """The decoder's share of ``flops_per_sample``."""
    features, kernels, flops = kwargs["features_per_stage"], kwargs["kernel_sizes"], 0.0
    for level in range(len(features) - 2, -1, -1):
        voxels, taps = float(np.prod(sizes[level])), float(np.prod(kernels[level]))
        flops += 2 * voxels * features[level + 1] * features[level]  # transposed conv (stride-sized kernel)
        for conv in range(kwargs["n_conv_per_stage_decoder"][level]):
            flops += 2 * voxels * taps * (2 if conv == 0 else 1) * features[level] ** 2
    flops += 2 * float(np.prod(sizes[0])) * features[0] * num_classes
    return flops


register_model(
    ModelFamily(
        name="unet",
        build=build_unet,
        task_type="segmentation",
        dims=(2, 3),
        summary="plain convolutional U-Net (nnU-Net's PlainConvUNet topology), deep supervision",
        architecture_for_patch=architecture_for_patch,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
    )
)
