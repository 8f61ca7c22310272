"""Model registry: every family registers a builder and what the planner needs to size it.

Architecture is data: plans store ``{"name": family, "kwargs": {...}}`` and the trainer, predictor
and server rebuild the network from that alone, so a new family never needs a trainer subclass.
This module imports no family: families register when ``medseg.models`` imports them (or when a
plug-in module is imported, see ``medseg.plugins``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from medseg.registry import Registry

ModelBuilder = Callable[..., "object"]  # (in_channels, num_classes, **kwargs) -> torch.nn.Module


@dataclass(frozen=True)
class ModelFamily:
    name: str
    build: ModelBuilder
    task_type: str  # the registered task that trains it (medseg.tasks), e.g. "segmentation"
    dims: tuple[int, ...]  # spatial dimensionalities supported (2, 3)
    summary: str
    kernels: tuple[str, ...] = ()  # kernel ops (medseg_kernels) the family runs on
    options: tuple[str, ...] = ()  # architecture kwargs a model spec may set (medseg.models.spec)
    # planner hooks, for families the self-configuring planner can size (None: fixed presets only)
    architecture_for_patch: Callable[..., dict] | None = None  # (spacing, patch_size, ndim, profile) -> kwargs + topology
    feature_map_size: Callable[..., int] | None = None  # (patch_size, in_channels, num_classes, kwargs) -> activations
    flops_per_sample: Callable[..., float] | None = None  # (patch_size, in_channels, num_classes, kwargs) -> fwd FLOPs
    # memory planning: activations per sample (ndim -> count) that fit the reference GPU at its
    # reference batch; None: nnU-Net's plain U-Net values (medseg.tasks.segmentation.planning)
    memory_reference: dict[int, float] | None = None
    # widths (widest first) the CPU time planner narrows the network through when the budget sees the
    # training images too rarely (medseg.tasks.image_plans); (): the width stays as the family sets it
    cpu_widths: tuple[int, ...] = ()


MODELS: Registry[ModelFamily] = Registry("model")


def register_model(family: ModelFamily) -> ModelFamily:
    return MODELS.register(family.name, family)


def list_models() -> list[ModelFamily]:
    return sorted(MODELS.values(), key=lambda family: family.name)


def get_model_family(name: str) -> ModelFamily:
    return MODELS.get(name)


def build_model(architecture: dict, in_channels: int, num_classes: int, deep_supervision: bool = False):
    """Network from a plans' architecture entry ``{"name": ..., "kwargs": {...}}``."""
    family = get_model_family(architecture["name"])
    return family.build(in_channels, num_classes, deep_supervision=deep_supervision, **architecture["kwargs"])


def stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[list[int]]:
    """Spatial size of each resolution stage (floor division, as strided convs with same padding give)."""
    sizes, current = [], list(patch_size)
    for stride in strides:
        current = [size // step for size, step in zip(current, stride)]
        sizes.append(current)
    return sizes
