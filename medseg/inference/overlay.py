"""Overlay PNG: the image in grey with each label blended in its colour (medseg.io.colours), for
a quick look at a prediction. 2D: the image itself; 3D: up to 9 slices evenly spread over the
labelled slab (over the whole volume when nothing is labelled), tiled row by row in slice order.
Intensities are windowed at the 1st-99th percentile."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_path, temporary_path
from medseg.io.colours import label_colour

MAX_SLICES = 9
ALPHA = 0.45


def _grey(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (plane.astype(np.float32) - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _blend(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(Y, X) grey, (Y, X) labels -> (Y, X, 3) RGB."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for value in np.unique(labels):
        if value <= 0:
            continue
        mask = labels == value
        rgb[mask] = (1 - ALPHA) * rgb[mask] + ALPHA * np.asarray(label_colour(int(value)), np.float32)
    return rgb.astype(np.uint8)


def overlay_slices(label_map: np.ndarray) -> list[int]:
    """Which slices (axis 0) of a 3D label map the overlay shows."""
    labelled = np.flatnonzero(label_map.reshape(label_map.shape[0], -1).any(axis=1))
    first, last = (labelled[0], labelled[-1]) if labelled.size else (0, label_map.shape[0] - 1)
    count = min(MAX_SLICES, last - first + 1)
    return sorted({int(round(v)) for v in np.linspace(first, last, count)})


def _first_channel_and_window(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(C, *spatial) -> the first channel as float32 and its 1st-99th percentile window."""
    plane_source = np.asarray(image[0], dtype=np.float32)
    finite = plane_source[np.isfinite(plane_source)]
    low, high = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    return plane_source, float(low), float(high)


def overlay_png(image: np.ndarray, label_map: np.ndarray, target: Path) -> Path:
    """``image``: (C, *spatial) (the first channel is shown); ``label_map``: (*spatial)."""
    from PIL import Image

    plane_source, low, high = _first_channel_and_window(image)
    if label_map.ndim == 2:
        canvas = _blend(_grey(plane_source, low, high), label_map)
    else:
        tiles = [_blend(_grey(plane_source[z], low, high), label_map[z]) for z in overlay_slices(label_map)]
        columns = int(np.ceil(np.sqrt(len(tiles))))
        rows = int(np.ceil(len(tiles) / columns))
        height, width = tiles[0].shape[:2]
        canvas = np.zeros((rows * height, columns * width, 3), np.uint8)
        for index, tile in enumerate(tiles):
            r, c = divmod(index, columns)
            canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile
    with atomic_path(target) as temporary:
        Image.fromarray(canvas).save(temporary, format="PNG")
    return target


def overlay_slice_pngs(image: np.ndarray, label_map: np.ndarray, target: Path) -> Path:
    """Every slice's overlay (axis 0 of a 3D map; the image itself in 2D) as TARGET/0000.png, ...,
    one window for all, for a slider. The folder appears complete or not at all."""
    from PIL import Image

    plane_source, low, high = _first_channel_and_window(image)
    pairs = [(plane_source, label_map)] if label_map.ndim == 2 else list(zip(plane_source, label_map))
    temporary = temporary_path(target, "")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        for index, (plane, labels) in enumerate(pairs):
            Image.fromarray(_blend(_grey(plane, low, high), labels)).save(temporary / f"{index:04d}.png", format="PNG")
        if target.exists():
            shutil.rmtree(target)
        temporary.replace(target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target
