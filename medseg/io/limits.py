"""How large an image medseg agrees to read: a header that claims more is refused before any
memory is allocated (a corrupt or hostile header must not take the machine's memory)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from medseg.errors import ImageReadError

LIMIT_VARIABLE = "MEDSEG_MAX_IMAGE_GB"
DEFAULT_LIMIT_GB = 16.0


def max_image_bytes() -> int:
    """The limit, from $MEDSEG_MAX_IMAGE_GB (default 16)."""
    return int(float(os.environ.get(LIMIT_VARIABLE, DEFAULT_LIMIT_GB)) * 1024**3)


def check_claimed_size(path: Path, shape: Sequence[int], bytes_per_voxel: int) -> int:
    """Refuse a header whose shape is above the limit; returns the claimed bytes."""
    shape = tuple(int(n) for n in shape)
    claimed = int(np.prod(shape, dtype=np.float64)) * bytes_per_voxel
    if claimed > max_image_bytes():
        raise ImageReadError(
            path, f"header claims shape {shape} ({claimed / 1024**3:.1f} GB), above the {max_image_bytes() / 1024**3:.0f} GB limit (${LIMIT_VARIABLE})"
        )
    return claimed
