"""Per-channel intensity normalisation schemes named in plans."""

from __future__ import annotations

import numpy as np

from medseg.errors import MedsegError

EPS = 1e-8


def _power_of_two_scaled(values: np.ndarray) -> np.ndarray:
    """``values`` divided by a power of two that brings its peak near 1 when it is large: squares of
    intensities near 1e33 overflow float32 (such an image was normalised to a constant and segmented
    as one). The division is exact, so z-scores and rescaling are unchanged for ordinary images."""
    peak = float(np.abs(values).max()) if values.size else 0.0
    if np.isfinite(peak) and peak > 2.0**20:
        values = values / np.float32(2.0 ** np.floor(np.log2(peak)))
    return values


def normalize_channel(channel: np.ndarray, scheme: str, properties: dict, mask: np.ndarray | None) -> np.ndarray:
    """channel: (*spatial) float32 -> normalised float32. ``mask`` limits z-score statistics (and output) to the body."""
    channel = channel.astype(np.float32, copy=True)
    if scheme == "zscore":
        if mask is not None and mask.any():
            values = _power_of_two_scaled(channel[mask])
            channel[mask] = (values - values.mean()) / max(float(values.std()), EPS)
            channel[~mask] = 0
        else:
            channel = _power_of_two_scaled(channel)
            channel -= channel.mean()
            channel /= max(float(channel.std()), EPS)
    elif scheme == "ct":  # clip to the foreground's 0.5-99.5 percentiles, then the foreground's z-score
        np.clip(channel, properties["percentile_00_5"], properties["percentile_99_5"], out=channel)
        channel -= properties["mean"]
        channel /= max(properties["std"], EPS)
    elif scheme == "rescale_to_0_1":
        channel = _power_of_two_scaled(channel)
        channel -= channel.min()
        channel /= max(float(channel.max()), EPS)
    elif scheme == "rgb_to_0_1":
        channel /= 255.0
    elif scheme != "none":
        raise MedsegError(f"unknown normalisation scheme '{scheme}' in plans")
    if not np.isfinite(channel).all():
        raise MedsegError(f"intensities from {float(np.nanmin(channel)):.3g} to {float(np.nanmax(channel)):.3g} overflow float32 under the '{scheme}' normalisation")
    return channel
