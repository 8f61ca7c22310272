"""Ensembles of segmentation models: the members' softmax (or region sigmoid)
probabilities (in the image's original geometry) averaged, then the most likely label, as nnU-Net
ensembles configurations."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from medseg.errors import MedsegError


def mean_probabilities(members: Sequence[np.ndarray]) -> np.ndarray:
    """members: each (K, *spatial) probabilities of one model -> their mean (K, *spatial)."""
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise MedsegError(f"ensemble members' probabilities differ in shape: {sorted(shapes)}")
    return np.mean(np.stack(members), axis=0)
