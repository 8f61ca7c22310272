"""The cascade, as nnU-Net runs it: ``3d_lowres`` segments a coarse version of the image, and
``3d_cascade_fullres`` sees that segmentation, resampled to its own grid, as one extra input
channel per foreground class. It trains on the low-resolution stage's out-of-fold predictions (its
cross-validation), so it learns to correct the errors that stage really makes on unseen images.

The previous stage's model folder is the sibling named by the same family (or trainer) and plans
(``unet__medsegPlans__3d_lowres`` beside ``unet__medsegPlans__3d_cascade_fullres``), nnU-Net's rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medseg.errors import MedsegError
from medseg.planning.plans import ConfigurationPlan


def previous_stage_folder(cascade_folder: Path, configuration: ConfigurationPlan) -> Path:
    """The model folder of ``configuration``'s previous stage: the sibling whose name ends in that
    stage instead (``unet__medsegPlans__3d_lowres``, ``nnUNetTrainer__nnUNetPlans__3d_lowres``)."""
    cascade_folder = Path(cascade_folder)
    prefix, _, _ = cascade_folder.name.rpartition("__")
    return cascade_folder.parent / f"{prefix}__{configuration.previous_stage}"


def out_of_fold_predictions(folder: Path, file_ending: str) -> dict[str, Path]:
    """case id -> the previous stage's prediction of it made by the fold that held it out."""
    found = {}
    for path in sorted(Path(folder).glob(f"fold_*/validation/*{file_ending}")):
        found[path.name[: -len(file_ending)]] = path
    return found


def require_out_of_fold_predictions(folder: Path, file_ending: str, case_ids: list[str], stage: str) -> dict[str, Path]:
    found = out_of_fold_predictions(folder, file_ending)
    missing = [case for case in case_ids if case not in found]
    if missing:
        raise MedsegError(
            f"{folder}: the cascade trains on {stage}'s out-of-fold predictions, and {len(missing)} case(s) have none "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); cross-validate {stage} on every fold first "
            f"(plan-and-train -c {stage} -c 3d_cascade_fullres does both)"
        )
    return found


def one_hot_foreground(segmentation: np.ndarray | torch.Tensor, num_classes: int):
    """(*S) label values -> (num_classes - 1, *S) float32, one channel per foreground class."""
    if isinstance(segmentation, torch.Tensor):
        values = torch.arange(1, num_classes, device=segmentation.device).view(-1, *([1] * segmentation.ndim))
        return (segmentation.unsqueeze(0) == values).float()
    values = np.arange(1, num_classes).reshape(-1, *([1] * segmentation.ndim))
    return (segmentation[None] == values).astype(np.float32)


def with_previous_stage(data, previous, num_classes: int):
    """data (C, *S), the previous stage's segmentation (*S) -> (C + num_classes - 1, *S): the
    cascade network's input."""
    if isinstance(data, torch.Tensor):
        return torch.cat([data, one_hot_foreground(previous, num_classes).to(data.dtype)])
    return np.concatenate([data, one_hot_foreground(previous, num_classes)]).astype(np.float32, copy=False)
