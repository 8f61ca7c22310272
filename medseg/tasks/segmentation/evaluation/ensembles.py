"""Ensembles of segmentation models: the members' softmax
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


def most_likely_labels(probabilities: np.ndarray) -> np.ndarray:
    """(K, *spatial) -> (*spatial) label values."""
    return np.argmax(probabilities, axis=0).astype(np.uint8 if probabilities.shape[0] <= 256 else np.int16)
