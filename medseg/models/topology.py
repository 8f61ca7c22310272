"""U-Net topology from spacing and patch size: how often each axis is downsampled, conv kernel
sizes per stage, and the patch size rounded so every pooling divides it.

The rule is nnU-Net's (so medseg's plain U-Net plans equal nnunetv2's): pool an axis while its
feature map stays at least 2x the minimum edge and its spacing is within 2x of the finest axis;
use 3-wide kernels on an axis once its spacing is within 2x of the finest axis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Topology:
    pools_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]  # per stage; stage 0 is all ones
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    patch_size: tuple[int, ...]  # rounded up to a multiple of divisible_by
    divisible_by: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.strides)


def pad_to_multiple(shape: Sequence[int], multiple: Sequence[int]) -> tuple[int, ...]:
    """Round each size up to the next multiple (a size already a multiple stays)."""
    return tuple(int(-(-size // step) * step) for size, step in zip(shape, multiple))


def plan_topology(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = 4) -> Topology:
    ndim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    strides: list[tuple[int, ...]] = [(1,) * ndim]
    kernels: list[tuple[int, ...]] = []
    pools = [0] * ndim
    kernel = [1] * ndim
    while True:
        poolable = [axis for axis in range(ndim) if current_size[axis] >= 2 * min_edge]
        if not poolable:
            break
        finest = min(current_spacing[axis] for axis in poolable)
        poolable = [axis for axis in poolable if current_spacing[axis] / finest < 2]
        # a single poolable axis is only pooled when it stays comfortably above the minimum edge
        if len(poolable) == 1 and current_size[poolable[0]] < 3 * min_edge:
            break
        if not poolable:
            break
        finest_overall = min(current_spacing)
        for axis in range(ndim):
            if kernel[axis] != 3 and current_spacing[axis] / finest_overall < 2:
                kernel[axis] = 3
        stride = [1] * ndim
        for axis in poolable:
            stride[axis] = 2
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = np.ceil(current_size[axis] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append((3,) * ndim)  # the bottleneck always uses 3-wide kernels
    divisible_by = tuple(2**p for p in pools)
    return Topology(tuple(pools), tuple(strides), tuple(kernels), pad_to_multiple(patch_size, divisible_by), divisible_by)
