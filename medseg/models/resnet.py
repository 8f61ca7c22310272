"""ResNet-18-sized CNN classifiers (2D, our own code: torchvision does not import here).

- ``resnet18``: stem (7x7 stride 2, max-pool), four stages of two basic residual blocks
  (``width``, 2x, 4x, 8x channels; stride 2 from the second stage), global average pooling, linear head.
- ``hag_cnn``: the same with hard-attention gates: a learnable per-channel sigmoid gate on every
  stage's output, trained by gradient routing (see medseg.tasks.classification).

Any input size works (global pooling); the planner still picks one, a multiple of 32."""

from __future__ import annotations

import torch
from torch import nn

from medseg.models.registry import ModelFamily, register_model
from medseg.models.vit import ChannelGate

RESNET_DEFAULTS = {"width": 64, "blocks_per_stage": [2, 2, 2, 2]}


# On 2 CPU cores a 10-minute Kermany run sees its images ~1 time at width 64; half the width takes
# 2.4x less time per step and won (pooled AUC 0.9963 vs 0.9913, bench/classification/kermany.py)
CPU_WIDTHS = (64, 32)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        return self.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64, blocks_per_stage=(2, 2, 2, 2), gated: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
        )
        stages, channels = [], width
        for index, count in enumerate(blocks_per_stage):
            out = width * 2**index
            blocks = [BasicBlock(channels, out, 1 if index == 0 else 2)] + [BasicBlock(out, out, 1) for _ in range(count - 1)]
            if gated:
                blocks.append(ChannelGate(out, axis=1))
            stages.append(nn.Sequential(*blocks))
            channels = out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, num_classes) logits."""
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def _build(gated: bool):
    def build(in_channels: int, num_classes: int, deep_supervision: bool = False, input_size: list[int] | None = None, **kwargs) -> ResNet:
        unknown = sorted(set(kwargs) - set(RESNET_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown ResNet settings {unknown} (it takes {sorted(RESNET_DEFAULTS)})")
        settings = {**RESNET_DEFAULTS, **kwargs}
        return ResNet(in_channels, num_classes, settings["width"], tuple(settings["blocks_per_stage"]), gated)

    return build


for name, gated, summary in (
    ("resnet18", False, "ResNet-18-sized CNN classifier (own code): the convolutional baseline for hag_cnn"),
    ("hag_cnn", True, "ResNet-18-sized CNN with hard-attention gates (a per-channel sigmoid gate on every stage output), trained with gradient routing"),
):
    register_model(ModelFamily(name=name, build=_build(gated), task_type="classification", dims=(2,), summary=summary, options=tuple(RESNET_DEFAULTS), cpu_widths=CPU_WIDTHS))
