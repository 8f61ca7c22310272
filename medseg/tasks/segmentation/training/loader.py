"""Training batches from preprocessed cases: patch sampling with foreground oversampling, then
augmentation, produced in a background worker process so both cores stay busy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from medseg.tasks.segmentation.cascade import with_previous_stage
from medseg.tasks.segmentation.preprocessing.dataset import load_locations, load_preprocessed_case
from medseg.tasks.segmentation.training.augmentation import AugmentationSettings, intensity_transform, mirror, spatial_transform


def region_for_augmentation(patch_size: Sequence[int], settings: AugmentationSettings | None) -> list[int]:
    """Extraction size so that a rotated, zoomed-out patch still lands on real data."""
    if settings is None:
        return list(patch_size)
    size = np.array(patch_size, dtype=float)
    angles = np.radians(np.linspace(0.0, min(settings.rotation_degrees, 90.0), 19))
    axes = [1, 2] if len(size) == 3 and settings.in_plane_only else list(range(len(size)))
    rotated = size.copy()
    for i in axes:  # bounding box of the rotated patch, worst case over the allowed angles
        others = sum(size[j] for j in axes if j != i)
        rotated[i] = max(size[i] * abs(np.cos(a)) + others * abs(np.sin(a)) for a in angles)
    rotated = np.maximum(rotated, size) * settings.scale_range[1]
    return [int(math.ceil(r)) + (int(math.ceil(r)) - p) % 2 for r, p in zip(rotated, patch_size)]


class PatchSampler:
    def __init__(
        self,
        folder: Path,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        batch_size: int,
        augmentation: AugmentationSettings | None,
        deep_supervision_scales: Sequence[Sequence[float]],
        oversample_foreground: float = 0.33,
        seed: int = 0,
        previous_stage_classes: int = 0,
    ):
        """``previous_stage_classes``: a cascade stage's class count; its cases' label channel 1 (the
        previous stage's segmentation) is augmented with the label, then joins the image one-hot."""
        self.folder, self.case_ids = Path(folder), list(case_ids)
        self.previous_stage_classes = previous_stage_classes
        self.patch_size, self.batch_size = list(patch_size), batch_size
        self.augmentation, self.scales = augmentation, [list(s) for s in deep_supervision_scales]
        self.oversample_foreground, self.seed = oversample_foreground, seed
        self.region = region_for_augmentation(patch_size, augmentation)
        self._cache: dict[str, tuple] = {}

    def _case(self, case_id: str):
        if case_id not in self._cache:
            data, seg, _ = load_preprocessed_case(self.folder, case_id, mmap=True)
            self._cache[case_id] = (data, seg, load_locations(self.folder, case_id))
        return self._cache[case_id]

    def _patch_start(self, shape: Sequence[int], rng: np.random.Generator, locations: dict[int, np.ndarray], force_fg: bool) -> list[int]:
        """Start of the patch (may lie outside the image by up to half the missing size), as nnU-Net."""
        need = [max(0, p - s) for p, s in zip(self.patch_size, shape)]
        low = [-(n // 2) for n in need]
        high = [s + n // 2 + n % 2 - p for s, n, p in zip(shape, need, self.patch_size)]
        present = [value for value, coordinates in locations.items() if len(coordinates)]
        if force_fg and present:
            coordinates = locations[present[rng.integers(len(present))]]
            voxel = coordinates[rng.integers(len(coordinates))]
            return [int(min(max(v - p // 2, lo), hi)) for v, p, lo, hi in zip(voxel, self.patch_size, low, high)]
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]

    @staticmethod
    def _slice(data, seg, locations: dict[int, np.ndarray], rng: np.random.Generator, force_fg: bool):
        """data (C, Z, Y, X), seg (1, Z, Y, X) -> one axial slice of each and the in-plane location
        to centre on: a foreground voxel's slice when foreground is forced, else a random slice."""
        present = [value for value, coordinates in locations.items() if len(coordinates)]
        if force_fg and present:
            coordinates = locations[present[rng.integers(len(present))]]
            voxel = coordinates[rng.integers(len(coordinates))]
            return data[:, int(voxel[0])], seg[:, int(voxel[0])], {1: voxel[None, 1:]}
        z = int(rng.integers(data.shape[1]))
        return data[:, z], seg[:, z], {}

    def _extract(self, array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
        """array: (C, *S) -> (C, *size) from ``start`` (may be negative), zero-padded outside."""
        source, pads = [slice(None)], [(0, 0)]
        for begin, length, extent in zip(start, size, array.shape[1:]):
            lo, hi = max(begin, 0), min(begin + length, extent)
            source.append(slice(lo, max(hi, lo)))
            pads.append((lo - begin, begin + length - max(hi, lo)))
        return np.pad(np.asarray(array[tuple(source)]), pads)

    def sample(self, rng: np.random.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> data (B, C, *P) float32 and the label at each deep-supervision scale (B, 1, *P_s) int64."""
        images, labels = [], []
        for index in range(self.batch_size):
            data, seg, locations = self._case(self.case_ids[rng.integers(len(self.case_ids))])
            # the last third of each batch is forced to contain foreground
            force_fg = index >= round(self.batch_size * (1 - self.oversample_foreground))
            if data.ndim == len(self.patch_size) + 2:  # a volume in a 2D configuration: one slice per sample
                data, seg, locations = self._slice(data, seg, locations, rng, force_fg)
            start = self._patch_start(data.shape[1:], rng, locations, force_fg)
            region_start = [s - (r - p) // 2 for s, r, p in zip(start, self.region, self.patch_size)]
            image = torch.from_numpy(self._extract(data, region_start, self.region).astype(np.float32))
            label = torch.from_numpy(self._extract(seg, region_start, self.region).astype(np.int64))
            if self.augmentation is not None:
                image, label = spatial_transform(image, label, self.patch_size, self.augmentation, rng)
                image = intensity_transform(image, self.augmentation, rng)
                image, label = mirror(image, label, self.augmentation.mirror_axes, rng)
            if self.previous_stage_classes:
                image, label = with_previous_stage(image, label[1], self.previous_stage_classes), label[:1]
            images.append(image)
            labels.append(label)
        data = torch.stack(images).contiguous()
        seg = torch.stack(labels)
        targets = []
        for scale in self.scales:
            if all(s == 1 for s in scale):
                targets.append(seg)
            else:
                size = [max(1, round(p * s)) for p, s in zip(self.patch_size, scale)]
                targets.append(F.interpolate(seg.float(), size=size, mode="nearest").long())
        return data, targets


class _InfiniteBatches(IterableDataset):
    def __init__(self, sampler: PatchSampler, seed: int):
        self.sampler, self.seed = sampler, seed

    def __iter__(self) -> Iterator:
        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # in the loader worker: the training process owns the math threads
        rng = np.random.default_rng(self.seed)
        while True:
            yield self.sampler.sample(rng)


def batch_stream(sampler: PatchSampler, seed: int, background: bool = True) -> Iterator:
    """Endless batches; ``background`` produces them in a worker process."""
    dataset = _InfiniteBatches(sampler, seed)
    if not background:
        return iter(dataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=False)
    return iter(loader)
