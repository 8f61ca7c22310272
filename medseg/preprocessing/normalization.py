"""Per-channel intensity normalisation schemes named in plans."""

from __future__ import annotations

import numpy as np

from medseg.errors import MedsegError

EPS = 1e-8


def normalize_channel(channel: np.ndarray, scheme: str, properties: dict, mask: np.ndarray | None) -> np.ndarray:
    """channel: (*spatial) float32 -> normalised float32. ``mask`` limits z-score statistics (and output) to the body."""
    channel = channel.astype(np.float32, copy=True)
    if scheme == "zscore":
        if mask is not None and mask.any():
            values = channel[mask]
            channel[mask] = (values - values.mean()) / max(float(values.std()), EPS)
            channel[~mask] = 0
        else:
            channel -= channel.mean()
            channel /= max(float(channel.std()), EPS)
    elif scheme == "ct":  # clip to the foreground's 0.5-99.5 percentiles, then the foreground's z-score
        np.clip(channel, properties["percentile_00_5"], properties["percentile_99_5"], out=channel)
        channel -= properties["mean"]
        channel /= max(properties["std"], EPS)
    elif scheme == "rescale_to_0_1":
        channel -= channel.min()
        channel /= max(float(channel.max()), EPS)
    elif scheme == "rgb_to_0_1":
        channel /= 255.0
    elif scheme != "none":
        raise MedsegError(f"unknown normalisation scheme '{scheme}' in plans")
    return channel
