"""Residual-encoder U-Net (nnU-Net's ResEnc presets: ``ResidualEncoderUNet`` of
dynamic_network_architectures), 2D/3D, with deep supervision.

The encoder is a stem (conv -> instance norm -> leaky ReLU at full resolution) followed, per stage,
by ``n_blocks_per_stage[s]`` ResNet-D basic blocks: conv-norm-act, conv-norm, plus a skip that
average-pools (when the block is strided) and projects with a 1x1 conv-norm (when the width
changes), then leaky ReLU. The decoder is the plain U-Net's (transposed conv, skip concatenation,
``n_conv_per_stage_decoder`` conv-norm-act, a 1x1 head per stage).

The planner sizes it as nnU-Net's ResEnc planners do: more blocks per encoder stage (1, 3, 4, 6, 6,
...), one conv per decoder stage, and its own activation reference (680 M voxels x channels for
3D, 135 M for 2D at 8 GB), so the M preset needs about what the default nnU-Net plan needs."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from medseg.models import unet
from medseg.models.registry import ModelFamily, register_model, stage_sizes
from medseg.models.unet import BASE_FEATURES, ConvNormAct, PlainUNet, _conv, _padding, decoder_feature_map_size, decoder_flops

BLOCKS_PER_STAGE = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnU-Net's ResEnc encoder depth per stage
# nnU-Net's activation references for ResidualEncoderUNet at 8 GB (its planner's tuned values)
MEMORY_REFERENCE = {2: 135_000_000, 3: 680_000_000}


class ConvNorm(nn.Sequential):
    """conv -> instance norm, no activation (the block's second conv and the skip projection)."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], bias: bool):
        norm = nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d
        super().__init__(_conv(ndim)(in_ch, out_ch, tuple(kernel), 1, _padding(kernel), bias=bias), norm(out_ch, eps=1e-5, affine=True))


class ResidualBlock(nn.Module):
    """ResNet-D basic block: (B, C_in, *S) -> (B, C_out, *S / stride)."""

    def __init__(self, ndim: int, in_ch: int, out_ch: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.conv1 = ConvNormAct(ndim, in_ch, out_ch, kernel, stride)
        self.conv2 = ConvNorm(ndim, out_ch, out_ch, kernel, bias=True)
        strided = any(s != 1 for s in stride)
        skip: list[nn.Module] = []
        if strided:  # ResNet-D: pool, then project, so no input voxel is skipped by a strided 1x1
            pool = nn.AvgPool2d if ndim == 2 else nn.AvgPool3d
            skip.append(pool(tuple(stride), tuple(stride)))
        if in_ch != out_ch:
            skip.append(ConvNorm(ndim, in_ch, out_ch, [1] * ndim, bias=False))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.skip(x))


def residual_encoder(
    ndim: int, in_channels: int, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
) -> list[nn.Sequential]:
    """Per stage a Sequential of residual blocks; stage 0 starts with the stem."""
    stages, channels = [], features_per_stage[0]
    for stage, (features, kernel, stride, blocks) in enumerate(zip(features_per_stage, kernel_sizes, strides, n_blocks_per_stage)):
        layers: list[nn.Module] = [ConvNormAct(ndim, in_channels, channels, kernel, [1] * ndim)] if stage == 0 else []
        layers.append(ResidualBlock(ndim, channels, features, kernel, stride))
        layers += [ResidualBlock(ndim, features, features, kernel, [1] * ndim) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
        channels = features
    return stages


def build_resenc_unet(
    in_channels: int, num_classes: int, deep_supervision: bool = False, *, features_per_stage, kernel_sizes, strides,
    n_blocks_per_stage, n_conv_per_stage_decoder,
) -> PlainUNet:
    ndim = len(kernel_sizes[0])
    if len(n_blocks_per_stage) != len(features_per_stage):
        raise ValueError(f"n_blocks_per_stage needs one entry per stage ({len(features_per_stage)}), got {len(n_blocks_per_stage)}")
    encoder = residual_encoder(ndim, in_channels, features_per_stage, kernel_sizes, strides, n_blocks_per_stage)
    network = PlainUNet(
        in_channels, num_classes, features_per_stage, kernel_sizes, strides, None, n_conv_per_stage_decoder,
        deep_supervision=deep_supervision, encoder=encoder,
    )
    for module in network.modules():  # each block starts as its skip alone (nnU-Net zeroes this norm too)
        if isinstance(module, ResidualBlock):
            nn.init.zeros_(module.conv2[1].weight)
    return network


# ------------------------------------------------------------------------------------ planner hooks
def architecture_for_patch(spacing, patch_size, base_features: int = BASE_FEATURES, max_features: int | None = None):
    """The plain U-Net's topology and widths, with ResEnc's encoder depth and one conv per decoder stage."""
    kwargs, topology = unet.architecture_for_patch(spacing, patch_size, base_features, max_features)
    stages = topology.num_stages
    del kwargs["n_conv_per_stage"]
    kwargs.update(n_blocks_per_stage=list(BLOCKS_PER_STAGE[:stages]), n_conv_per_stage_decoder=[1] * (stages - 1))
    return kwargs, topology


def feature_map_size(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> int:
    """Activations per sample as nnU-Net counts them for ResidualEncoderUNet: the stem, two convs per
    block, the skip projection of each stage's first block (which changes resolution or width)."""
    features, strides = kwargs["features_per_stage"], kwargs["strides"]
    sizes = stage_sizes(patch_size, strides)
    total = features[0] * int(np.prod(patch_size, dtype=np.int64))  # stem
    channels = features[0]
    for features_s, blocks, size, stride in zip(features, kwargs["n_blocks_per_stage"], sizes, strides):
        voxels = int(np.prod(size, dtype=np.int64))
        total += 2 * blocks * features_s * voxels
        if channels != features_s or any(s != 1 for s in stride):
            total += features_s * voxels
        channels = features_s
    return total + decoder_feature_map_size(sizes, num_classes, kwargs)


def flops_per_sample(patch_size, in_channels: int, num_classes: int, kwargs: dict) -> float:
    """Forward FLOPs of one sample (2 per multiply-add): the CPU planner's time model."""
    features, kernels, strides = kwargs["features_per_stage"], kwargs["kernel_sizes"], kwargs["strides"]
    sizes = stage_sizes(patch_size, strides)
    flops = 2.0 * float(np.prod(patch_size)) * float(np.prod(kernels[0])) * in_channels * features[0]  # stem
    channels = features[0]
    for features_s, kernel, size, blocks in zip(features, kernels, sizes, kwargs["n_blocks_per_stage"]):
        voxels, taps = float(np.prod(size)), float(np.prod(kernel))
        flops += 2 * voxels * taps * features_s * (channels + features_s)  # the first block's two convs
        flops += 2 * voxels * taps * features_s * features_s * 2 * (blocks - 1)
        if channels != features_s:
            flops += 2 * voxels * channels * features_s  # 1x1 skip projection
        channels = features_s
    return flops + decoder_flops(sizes, num_classes, kwargs)


register_model(
    ModelFamily(
        name="resenc_unet",
        build=build_resenc_unet,
        task_type="segmentation",
        dims=(2, 3),
        summary="residual-encoder U-Net (nnU-Net's ResEnc presets: ResNet-D blocks 1, 3, 4, 6, 6, ... per encoder stage), deep supervision",
        architecture_for_patch=architecture_for_patch,
        feature_map_size=feature_map_size,
        flops_per_sample=flops_per_sample,
        memory_reference=MEMORY_REFERENCE,
    )
)
