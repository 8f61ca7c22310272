"""Class probabilities kept beside a label map (``CASE.probabilities.npz``): what `medseg predict
--save-probabilities` and the final validation write, and what ensembles are made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.atomic import atomic_path
from medseg.errors import MedsegError

PROBABILITIES_SUFFIX = ".probabilities.npz"  # beside CASE.nii.gz: `predict --save-probabilities`, final validation


def save_probabilities_npz(probabilities: np.ndarray, path: Path) -> None:
    """probabilities: (K, *spatial) -> ``path`` as float16 (half the disk, ~1e-3 resolution)."""
    with atomic_path(path) as temporary:
        np.savez_compressed(temporary, probabilities=probabilities.astype(np.float16))


def load_probabilities_npz(path: Path) -> np.ndarray:
    """(K, *spatial) float32 from a ``*.probabilities.npz``; a missing or damaged file is named."""
    try:
        with np.load(path) as content:
            return content["probabilities"].astype(np.float32)
    except FileNotFoundError:
        raise MedsegError(f"{path}: missing") from None
    except (OSError, KeyError, ValueError) as error:
        raise MedsegError(f"{path}: not a probabilities file ({error})") from None
