"""Experiment planner: fingerprint + dataset.json -> plans (2d, 3d_fullres, 3d_lowres + cascade).

Two ways to size patches and batches:
- ``memory``: nnU-Net's rule (its activation-count proxy against a reference calibrated for an
  8 GB GPU), so medseg's plain U-Net plan equals nnunetv2's at the same memory target.
- ``time``: for CPUs, where memory is plentiful but every step costs seconds. The network's
  forward+backward FLOPs per sample, divided by this machine's measured convolution throughput,
  must fit a target step time, so a training budget buys enough iterations. When the training
  budget is known, a configuration whose budget would see the data fewer than MIN_PASSES times
  is planned at a coarser spacing, as far as the foreground objects stay large enough to segment
  (Kvasir-SEG, 10 CPU minutes: at 256² the budget sees the data 2.4 times, held-out Dice 0.49;
  planned at spacing 2.2, 128², Dice 0.75; DSB2018's small nuclei keep full resolution)."""

from __future__ import annotations

import json
import re
from collections import Counter
from copy import deepcopy

import numpy as np

from medseg.data.layout import DatasetDescription
from medseg.errors import MedsegError
from medseg.models.registry import ModelFamily, get_model_family
from medseg.planning.budget import REFERENCE_GB, Budget
from medseg.planning.fingerprint import Fingerprint
from medseg.planning.plans import ConfigurationPlan, Plans
from medseg.models.topology import plan_topology

ANISOTROPY_THRESHOLD = 3.0
REFERENCE_ACTIVATIONS = {2: 85_000_000, 3: 560_000_000}  # nnU-Net's values for an 8 GB GPU ...
REFERENCE_BATCH = {2: 12, 3: 2}  # ... at these batch sizes
MIN_BATCH = 2
LOWRES_THRESHOLD = 0.25  # plan 3d_lowres when the fullres patch covers less than this of the median image
LOWRES_SPACING_STEP = 1.03
# time mode: optimizer steps a run's budget should buy at least. The demo's 144-second folds scored
# foreground Dice 0.72-0.76 when the plan (a 5-stage U-Net, 20x64x64) bought 135-160 steps, and
# 0.87-0.88 at 180-225 steps of a 4-stage one (README, demo runs)
MIN_STEPS = 250
MIN_PASSES = 15.0  # time mode: passes over the training data a budget should buy ...
MIN_OBJECT_VOXELS = 24.0  # ... coarsening no further than this size (voxels) of the 25th-percentile object
OBJECT_PERCENTILE = 25
NORMALIZATION_BY_CHANNEL_NAME = {"ct": "ct", "nonorm": "none", "zscore": "zscore", "rescale_to_0_1": "rescale_to_0_1", "rgb_to_0_1": "rgb_to_0_1"}
MASKABLE_SCHEMES = {"zscore"}  # schemes that may normalise inside the nonzero mask only
TRAINING_DEFAULTS = {
    # nnU-Net's recipe is tuned for ~250k GPU iterations; a CPU time budget buys hundreds, where
    # AdamW converges several times faster (demo: Dice 0.90 vs 0.22 after 150 s)
    "memory": {"optimizer": "sgd", "learning_rate": 1e-2},
    "time": {"optimizer": "adamw", "learning_rate": 3e-3},
}
_LATERAL = re.compile(r"(^|[^a-z])(left|right)([^a-z]|$)")


def normalization_scheme(channel_name: str) -> str:
    return NORMALIZATION_BY_CHANNEL_NAME.get(channel_name.casefold(), "zscore")


def fullres_target_spacing(fingerprint: Fingerprint) -> np.ndarray:
    """Median spacing, except that a much coarser axis with few voxels takes its 10th percentile."""
    spacings = np.array(fingerprint.spacings, dtype=float)
    target = np.percentile(spacings, 50, axis=0)
    if fingerprint.ndim == 2:
        return target
    median_size = np.percentile(np.array(fingerprint.shapes_after_crop, dtype=float), 50, axis=0)
    worst = int(np.argmax(target))
    others = [axis for axis in range(len(target)) if axis != worst]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    aniso_voxels = median_size[worst] * ANISOTROPY_THRESHOLD < min(median_size[others])
    if aniso_spacing and aniso_voxels:
        coarse = np.percentile(spacings[:, worst], 10)
        if coarse < max(target[others]):
            coarse = max(max(target[others]), coarse) + 1e-5
        target[worst] = coarse
    return target


def transpose_for(target_spacing: np.ndarray) -> tuple[list[int], list[int]]:
    """Coarsest axis first (so 2D slices are in-plane), as nnU-Net does."""
    if len(target_spacing) == 2:
        return [0, 1], [0, 1]
    coarsest = int(np.argmax(target_spacing))
    forward = [coarsest] + [axis for axis in range(3) if axis != coarsest]
    backward = [forward.index(axis) for axis in range(3)]
    return forward, backward


def resampled_shape(shape, spacing, target_spacing) -> np.ndarray:
    return np.array([int(round(s / t * n)) for s, t, n in zip(spacing, target_spacing, shape)])


class ConfigurationSizer:
    """Shrinks a patch from the image's aspect ratio until one batch fits the budget."""

    def __init__(self, family: ModelFamily, budget: Budget, in_channels: int, num_classes: int, options: dict | None = None):
        if family.architecture_for_patch is None:
            raise MedsegError(f"model '{family.name}' cannot be self-configured (it has no planner hooks)")
        self.family, self.budget = family, budget
        self.in_channels, self.num_classes = in_channels, num_classes
        self.options = dict(options or {})  # a model spec's settings, priced like the planned ones
        self._cache: dict[tuple, float] = {}

    def _architecture(self, spacing, patch):
        kwargs, topology = self.family.architecture_for_patch(spacing, patch, base_features=self.budget.base_features)
        return {**kwargs, **self.options}, topology

    def cost(self, patch, kwargs) -> float:
        """Memory mode: activations per sample. Time mode: seconds per sample (forward+backward)."""
        key = (tuple(patch), json_key(kwargs))
        if key not in self._cache:
            if self.budget.mode == "memory":
                value = float(self.family.feature_map_size(patch, self.in_channels, self.num_classes, kwargs))
            else:
                flops = self.family.flops_per_sample(patch, self.in_channels, self.num_classes, kwargs)
                value = 3.0 * flops / self.budget.flops_per_second[len(patch)]  # backward ~ 2x forward
            self._cache[key] = value
        return self._cache[key]

    def reference(self, ndim: int) -> float:
        if self.budget.mode == "memory":
            if self.budget.reference_activations and ndim in self.budget.reference_activations:
                return self.budget.reference_activations[ndim] * self.budget.memory_gb / self.budget.reference_gb
            references = self.family.memory_reference or REFERENCE_ACTIVATIONS
            return references[ndim] * self.budget.memory_gb / REFERENCE_GB
        if self.budget.training_seconds:  # a short budget still buys MIN_STEPS steps, of smaller patches
            return min(self.budget.step_seconds, self.budget.training_seconds / MIN_STEPS)
        return self.budget.step_seconds

    def too_big(self, cost: float, ndim: int) -> bool:
        if self.budget.mode == "memory":
            return cost / REFERENCE_BATCH[ndim] * MIN_BATCH > self.reference(ndim)
        return cost * MIN_BATCH > self.reference(ndim)

    def batch_size(self, cost: float, ndim: int) -> int:
        if self.budget.mode == "memory":
            return round(self.reference(ndim) / cost * REFERENCE_BATCH[ndim])
        return int(self.reference(ndim) // cost)

    def size(self, spacing, median_shape, dataset_voxels: float) -> tuple[list[int], int, dict]:
        ndim = len(spacing)
        inverse = 1.0 / np.asarray(spacing, dtype=float)
        start_edge = 256**3 if ndim == 3 else 2048**2
        initial = [round(v) for v in inverse * (start_edge / np.prod(inverse)) ** (1 / ndim)]
        patch = [min(a, float(b)) for a, b in zip(initial, median_shape)]  # float, as nnU-Net rounds it up
        kwargs, topology = self._architecture(spacing, patch)
        patch = list(topology.patch_size)
        cost = self.cost(patch, kwargs)
        while self.too_big(cost, ndim):
            # shrink the axis that is largest relative to the median image, by one pooling multiple
            axis = int(np.argsort([p / m for p, m in zip(patch, median_shape)])[-1])
            trial = deepcopy(patch)
            trial[axis] -= topology.divisible_by[axis]
            step = plan_topology(spacing, trial).divisible_by[axis]
            patch[axis] -= step
            if patch[axis] < 1:
                raise MedsegError(f"cannot fit even the smallest patch into the budget {self.budget.describe()}")
            kwargs, topology = self._architecture(spacing, patch)
            patch = list(topology.patch_size)
            cost = self.cost(patch, kwargs)
        batch = self.batch_size(cost, ndim)
        dataset_cap = round(dataset_voxels * self.budget.max_dataset_fraction / np.prod(patch, dtype=np.float64))
        batch = max(min(batch, dataset_cap), MIN_BATCH)
        return [int(p) for p in patch], int(batch), kwargs

    def passes(self, patch, kwargs, dataset_voxels: float) -> float:
        """Time mode: how many times the training budget sees the data (inf without a budget)."""
        if self.budget.mode != "time" or not self.budget.training_seconds:
            return float("inf")
        samples = self.budget.training_seconds / self.cost(patch, kwargs)
        return samples * float(np.prod(patch, dtype=np.float64)) / dataset_voxels


def coarser_spacing(spacing: np.ndarray) -> np.ndarray:
    """One step coarser, the finest axes first while the spacing is anisotropic (nnU-Net's lowres rule)."""
    spacing = np.array(spacing, dtype=float)
    coarsest = spacing.max()
    if np.any(coarsest / spacing > 2):
        spacing[coarsest / spacing > 2] *= LOWRES_SPACING_STEP
    else:
        spacing *= LOWRES_SPACING_STEP
    return spacing


def object_size_voxels(extents_mm: np.ndarray, spacing: np.ndarray, axes: np.ndarray) -> float:
    """The OBJECT_PERCENTILE-th percentile over objects of their smallest size in voxels along ``axes``."""
    if extents_mm.size == 0:
        return 0.0
    voxels = extents_mm[:, axes] / spacing[axes]
    return float(np.percentile(voxels.min(axis=1), OBJECT_PERCENTILE))


def json_key(value) -> str:
    return json.dumps(value, sort_keys=True)


def plan_experiment(
    fingerprint: Fingerprint,
    description: DatasetDescription,
    budget: Budget,
    model: str = "unet",
    plans_name: str = "medsegPlans",
    preset: dict | None = None,
    model_options: dict | None = None,
) -> Plans:
    """``preset``: a preset's settings (medseg_plans); the budget already holds its sizing, the
    planner applies ``min_spacing_mm`` and records the preset's name. ``model_options``: a model
    spec's architecture settings (medseg.models.spec), set in every configuration."""
    preset = preset or {}
    family = get_model_family(model)
    labels = {name: int(value) for name, value in description.labels.items()}
    num_classes = len(description.regions) if description.regions else max(labels.values()) + 1
    sizer = ConfigurationSizer(family, budget, description.num_channels, num_classes, model_options)
    target = fullres_target_spacing(fingerprint)
    if "min_spacing_mm" in preset:
        target = np.maximum(target, float(preset["min_spacing_mm"]))
    forward, backward = transpose_for(target)
    target_t = target[forward]
    new_shapes = [resampled_shape(shape, spacing, target) for shape, spacing in zip(fingerprint.shapes_after_crop, fingerprint.spacings)]
    median_t = np.median(new_shapes, axis=0)[forward]
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * len(fingerprint.case_ids))
    normalization = _normalization(fingerprint)
    lateral = has_laterality(labels)
    lr_axis = _left_right_axis(fingerprint, forward)
    extents = [e for case in fingerprint.object_extents_mm for e in case]
    extents_t = np.array(extents, dtype=float).reshape(-1, len(forward))[:, forward]

    def configuration(name, spacing, median_shape, voxels, batch_dice, fit_budget=True) -> ConfigurationPlan:
        spacing, median_shape = np.asarray(spacing, dtype=float), np.asarray(median_shape, dtype=float)
        patch, batch, kwargs = sizer.size(list(spacing), list(median_shape), voxels)
        if fit_budget:
            spacing, median_shape, voxels, (patch, batch, kwargs) = _fit_spacing_to_budget(
                sizer, spacing, median_shape, voxels, (patch, batch, kwargs), extents_t[:, -len(spacing):]
            )
        return ConfigurationPlan(
            name=name,
            ndim=len(spacing),
            spacing=[float(s) for s in spacing],
            median_shape=[int(round(s)) for s in median_shape],
            patch_size=patch,
            batch_size=batch,
            batch_dice=batch_dice,
            normalization=deepcopy(normalization),
            architecture={"name": family.name, "kwargs": kwargs},
            resampling={"image_order": 3, "label_order": 1, "out_of_plane_order": 0, "anisotropy_threshold": ANISOTROPY_THRESHOLD},
            data_identifier=f"{plans_name}_{name}",
            augmentation=augmentation_plan(patch, lateral, lr_axis),
            training=dict(TRAINING_DEFAULTS[budget.mode]),
        )

    configurations: dict[str, ConfigurationPlan] = {}
    if fingerprint.ndim == 3 and median_t[0] != 1:
        fullres = configuration("3d_fullres", target_t, median_t, dataset_voxels, batch_dice=False)
        lowres = _plan_lowres(fullres, median_t, len(fingerprint.case_ids), configuration)
        if lowres is not None:
            lowres.next_stage, fullres.batch_dice = "3d_cascade_fullres", True
            configurations["3d_lowres"] = lowres
        configurations["3d_fullres"] = fullres
        if lowres is not None:
            cascade = deepcopy(fullres)
            cascade.name, cascade.previous_stage = "3d_cascade_fullres", "3d_lowres"
            cascade.data_identifier = f"{plans_name}_3d_cascade_fullres"  # its data carry the previous stage's segmentation
            configurations["3d_cascade_fullres"] = cascade
        two_d = configuration("2d", target_t[1:], median_t[1:], dataset_voxels, batch_dice=True)
    else:
        spacing_2d = target_t[-2:]
        two_d = configuration("2d", spacing_2d, median_t[-2:], dataset_voxels, batch_dice=True)
    configurations = {"2d": two_d, **configurations}
    if model_options:
        for planned in configurations.values():
            _check_buildable(planned, description.num_channels, num_classes, model_options)
    spacings = np.array(fingerprint.spacings, dtype=float)
    return Plans(
        dataset_name=fingerprint.dataset_name,
        plans_name=plans_name,
        planner={
            **budget.describe(), "model": family.name, **({"preset": preset["preset"]} if "preset" in preset else {}),
            **({"model_options": dict(model_options)} if model_options else {}),
        },
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=[float(s) for s in np.median(spacings, axis=0)[forward]],
        original_median_shape=[int(round(s)) for s in np.median(np.array(fingerprint.shapes_after_crop), axis=0)[forward]],
        labels=labels,
        regions={name: list(values) for name, values in description.regions.items()} if description.regions else None,
        ignore_label=description.ignore_label,
        channel_names=list(fingerprint.channel_names),
        foreground_intensity_properties_per_channel=fingerprint.foreground_intensity_properties_per_channel,
        configurations=configurations,
    )


def _check_buildable(configuration: ConfigurationPlan, in_channels: int, num_classes: int, options: dict) -> None:
    """A model option the family rejects (a misspelt direction, a stage it does not have) fails at
    planning, not minutes into training. Built on the meta device: no weights are allocated."""
    import torch

    from medseg.models.registry import build_model

    try:
        with torch.device("meta"):
            build_model(configuration.architecture, in_channels, num_classes)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        raise MedsegError(f"{configuration.architecture['name']} [{shown}] does not build for {configuration.name}: {error}") from None


def _fit_spacing_to_budget(sizer, spacing, median_shape, voxels, sized, extents_t):
    """Time mode with a known budget: coarsen while the budget sees the data fewer than MIN_PASSES
    times and the objects stay at least MIN_OBJECT_VOXELS across along every coarsened axis."""
    patch, _, kwargs = sized
    while sizer.passes(patch, kwargs, voxels) < MIN_PASSES:
        trial = coarser_spacing(spacing)
        coarsened = np.flatnonzero(trial > spacing)
        if object_size_voxels(extents_t, trial, coarsened) < MIN_OBJECT_VOXELS:
            break
        shape = spacing / trial * median_shape
        voxels = voxels * float(np.prod(shape, dtype=np.float64) / np.prod(median_shape, dtype=np.float64))
        spacing, median_shape = trial, shape
        sized = sizer.size(list(spacing), list(median_shape), voxels)
        patch, _, kwargs = sized
    return spacing, median_shape, voxels, sized


def has_laterality(labels: dict[str, int]) -> bool:
    """Labels that name a side (left_kidney, Lung-Right) must not be mirrored across the body."""
    return any(_LATERAL.search(name.lower()) for name in labels)


def _left_right_axis(fingerprint: Fingerprint, forward: list[int]) -> int | None:
    """The most common right-left array axis of the cases, in transposed order."""
    axes = Counter(getattr(fingerprint, "left_right_axes", None) or [])
    if not axes:
        return None
    axis, _ = axes.most_common(1)[0]
    return None if axis is None else forward.index(axis)


def augmentation_plan(patch: list[int], lateral: bool, lr_axis: int | None) -> dict:
    """nnU-Net's spatial augmentation, made laterality-aware.

    2D and anisotropic ("dummy 2D") 3D patches rotate in-plane up to 180 degrees, isotropic 3D up
    to 30; every axis is mirrored. When labels name a side, mirroring across the right-left axis
    and rotations past 30 degrees would turn a left organ into a right one, so both are dropped."""
    ndim = len(patch)
    in_plane = ndim == 3 and max(patch) / patch[0] > ANISOTROPY_THRESHOLD
    rotation = 180.0 if ndim == 2 or in_plane else 30.0
    mirror_axes = list(range(ndim))
    if lateral:
        rotation = 30.0
        if lr_axis is None:
            mirror_axes = []  # side unknown: never mirror
        else:
            side_axis = lr_axis - (3 - ndim)  # a 2D configuration of 3D data sees transposed axes 1, 2
            mirror_axes = [axis for axis in mirror_axes if axis != side_axis]
    return {"mirror_axes": mirror_axes, "rotation_degrees": rotation, "in_plane_only": in_plane}


def _normalization(fingerprint: Fingerprint) -> list[dict]:
    use_mask_allowed = fingerprint.median_relative_size_after_cropping < 0.75
    schemes = []
    for index, name in enumerate(fingerprint.channel_names):
        scheme = normalization_scheme(name)
        schemes.append(
            {
                "scheme": scheme,
                "use_mask": bool(use_mask_allowed and scheme in MASKABLE_SCHEMES),
                "properties": fingerprint.foreground_intensity_properties_per_channel[str(index)] if scheme == "ct" else {},
            }
        )
    return schemes


def _plan_lowres(fullres: ConfigurationPlan, median_t: np.ndarray, num_cases: int, configuration) -> ConfigurationPlan | None:
    """Coarsen the spacing (anisotropic axes first) until a patch covers a quarter of the median image."""
    median_voxels = float(np.prod(median_t, dtype=np.float64))
    patch_voxels = float(np.prod(fullres.patch_size, dtype=np.float64))
    spacing = np.array(fullres.spacing, dtype=float)
    lowres = None
    while patch_voxels / median_voxels < LOWRES_THRESHOLD:
        spacing = coarser_spacing(spacing)
        shape = np.array(fullres.spacing) / spacing * median_t
        median_voxels = float(np.prod(shape, dtype=np.float64))
        lowres = configuration("3d_lowres", spacing.copy(), [round(s) for s in shape], median_voxels * num_cases, batch_dice=False, fit_budget=False)
        patch_voxels = float(np.prod(lowres.patch_size, dtype=np.float64))
    if lowres is not None and float(np.prod(median_t, dtype=np.float64)) / median_voxels < 2:
        return None  # too close to fullres to be worth a stage
    return lowres
