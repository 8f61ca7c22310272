"""Sliding-window prediction over a whole (preprocessed) image."""

from __future__ import annotations

import itertools
import time
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def window_starts(image_size: int, patch: int, step_fraction: float) -> list[int]:
    """Evenly spread starts so neighbouring windows overlap by at least 1 - step_fraction."""
    if image_size <= patch:
        return [0]
    steps = int(np.ceil((image_size - patch) / (patch * step_fraction))) + 1
    stride = (image_size - patch) / (steps - 1)
    return [int(round(stride * i)) for i in range(steps)]


@lru_cache(maxsize=8)
def gaussian_importance(patch: tuple[int, ...], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """(*patch) weights: a gaussian (sigma = patch / 8) peaking at voxel ``n // 2`` of each axis,
    blurred from a single voxel and truncated as scipy's gaussian_filter does, no zeros. This is
    nnU-Net's window weighting exactly: with the peak half a voxel off centre on even sizes, a
    symmetric gaussian blends overlapping windows differently, and an nnU-Net model's labels
    then differ where its windows disagree (0.4% of the voxels of a small cascade model)."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(n // 2 for n in patch)] = 1.0
    weight = gaussian_filter(impulse, [n * sigma_scale for n in patch], order=0, mode="constant", cval=0.0)
    weight = torch.from_numpy(weight / weight.max()).float()
    return torch.where(weight > 0, weight, weight[weight > 0].min())


# what one CPU measurement decided, per network and window shape (a server measures once)
_MEASURED_WINDOWS_PER_BATCH: dict[tuple, int] = {}


def fastest_windows_per_batch(network: Callable[[torch.Tensor], torch.Tensor], window_shape: Sequence[int], candidates: Sequence[int] = (1, 2)) -> int:
    """window_shape: (C, *patch). The number of windows per forward pass with the lowest time per
    window, measured on random windows (one warm-up each, then timed) on the CPU. Why measure: for
    small windows PyTorch runs a batch of one through its slow native 3D convolution instead of
    oneDNN (its heuristic looks at the batch and the first axes' sizes), which made one window per
    forward 2-3.7x slower per window than two on the 16x56x64 and 20x64x64 patches of the demo,
    while two per forward was 1.3-1.4x slower than one on a 32x96x96 patch."""
    key = (id(network), tuple(int(n) for n in window_shape), torch.get_num_threads())
    if key not in _MEASURED_WINDOWS_PER_BATCH:
        generator = torch.Generator().manual_seed(0)
        seconds_per_window = {}
        with torch.inference_mode():
            for count in candidates:
                windows = torch.randn(count, *key[1], generator=generator)
                network(windows)  # warm-up: oneDNN builds its kernels on the first call of a shape
                started = time.perf_counter()
                network(windows)
                seconds_per_window[count] = (time.perf_counter() - started) / count
        _MEASURED_WINDOWS_PER_BATCH[key] = min(seconds_per_window, key=seconds_per_window.get)
    return _MEASURED_WINDOWS_PER_BATCH[key]


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_logits(
    network: Callable[[torch.Tensor], torch.Tensor],
    data: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    step_fraction: float = 0.5,
    mirror_axes: Sequence[int] = (),
    windows_per_batch: int = 1,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """data: (C, *S) -> logits (K, *S) float32 on the CPU. ``mirror_axes`` count spatial axes from 0."""
    patch = tuple(int(p) for p in patch_size)
    spatial = data.shape[1:]
    padding = [max(0, p - s) for p, s in zip(patch, spatial)]
    pad_spec = []
    for amount in reversed(padding):
        pad_spec += [amount // 2, amount - amount // 2]
    padded = F.pad(data, pad_spec) if any(padding) else data
    size = padded.shape[1:]
    starts = list(itertools.product(*[window_starts(n, p, step_fraction) for n, p in zip(size, patch)]))
    weight = gaussian_importance(patch).to(device)
    accumulated = torch.zeros((num_classes, *size), dtype=torch.float32, device=device)
    coverage = torch.zeros(size, dtype=torch.float32, device=device)
    flips = mirror_combinations(tuple(mirror_axes))
    for first in range(0, len(starts), windows_per_batch):
        chunk = starts[first : first + windows_per_batch]
        windows = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in chunk]
        batch = torch.stack([padded[(slice(None),) + w] for w in windows]).to(device, torch.float32)
        logits = torch.zeros((len(chunk), num_classes, *patch), dtype=torch.float32, device=device)
        for flip in flips:
            dims = [axis + 2 for axis in flip]
            inputs = torch.flip(batch, dims) if dims else batch
            output = network(inputs)
            if isinstance(output, (list, tuple)):
                output = output[0]
            logits += torch.flip(output, dims) if dims else output
        logits /= len(flips)
        for window, window_logits in zip(windows, logits):
            accumulated[(slice(None),) + window] += window_logits * weight
            coverage[window] += weight
    del batch, logits
    accumulated /= coverage  # in place: a second (K, *S) buffer would be the largest allocation of the run
    crop = tuple(slice(p // 2, p // 2 + s) for p, s in zip(padding, spatial))
    return accumulated[(slice(None),) + crop].cpu()
