"""AbdomenMRI-demo: a synthetic abdominal MRI phantom, the built-in demo of the quick start.

Each case is a deformed body outline holding liver, spleen and both kidneys as smooth, randomly
placed, scaled, rotated and elastically deformed ellipsoids, imaged with MR-like properties: no
absolute intensity scale, a smooth multiplicative bias field, partial-volume blur, Rician noise and
anisotropic voxels (thick slices). Deterministic for a given seed and case index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg.data.builder import ConversionSummary, RawDatasetBuilder
from medseg.io import MedicalImage
from medseg.io.image import default_direction
from medseg_datasets.registry import Recipe, register_recipe

SHAPE = (20, 64, 80)  # (Z, Y, X) voxels
SPACING = (6.0, 3.0, 3.0)  # mm: thick slices, as in clinical abdominal MRI
LABELS = {"background": 0, "liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}
# organ: (centre x, y, z in mm, LPS, so right = -x, posterior = +y), semi-axes (mm), relative T2 signal
ORGANS = {
    "liver": ((-40.0, -5.0, 10.0), (52.0, 48.0, 42.0), 0.32),
    "spleen": ((62.0, 30.0, 15.0), (22.0, 30.0, 32.0), 0.62),
    "right_kidney": ((-42.0, 42.0, -25.0), (18.0, 16.0, 34.0), 0.80),
    "left_kidney": ((44.0, 44.0, -20.0), (18.0, 16.0, 34.0), 0.80),
}
FAT_SIGNAL, MUSCLE_SIGNAL = 0.95, 0.45


def _smooth_field(rng: np.random.Generator, coarse_shape: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    coarse = rng.standard_normal(coarse_shape)
    return ndimage.zoom(coarse, [s / c for s, c in zip(shape, coarse_shape)], order=3, mode="nearest")


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: image (Z, Y, X) int16 and label (Z, Y, X) uint8."""
    rng = np.random.default_rng(seed)
    z, y, x = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(SHAPE, SPACING)]
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    # elastic deformation: a smooth random displacement of every point, ~6 mm
    xx = xx + 6.0 * _smooth_field(rng, (3, 4, 5), SHAPE)
    yy = yy + 6.0 * _smooth_field(rng, (3, 4, 5), SHAPE)
    zz = zz + 6.0 * _smooth_field(rng, (3, 4, 5), SHAPE)
    body_a, body_b = 110 * rng.uniform(0.92, 1.05), 82 * rng.uniform(0.92, 1.05)
    body = (xx / body_a) ** 2 + ((yy - 5) / body_b) ** 2 <= 1.0
    inner = (xx / (body_a - 12)) ** 2 + ((yy - 5) / (body_b - 12)) ** 2 <= 1.0  # inside the fat layer
    label = np.zeros(SHAPE, dtype=np.uint8)
    signal = np.where(inner, MUSCLE_SIGNAL, FAT_SIGNAL) * body
    for value, (name, (centre, radii, organ_signal)) in enumerate(ORGANS.items(), start=1):
        cx, cy, cz = np.asarray(centre) + rng.uniform(-8, 8, 3)
        rx, ry, rz = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        angle = np.radians(rng.uniform(-15, 15))
        u = np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)
        v = -np.sin(angle) * (xx - cx) + np.cos(angle) * (yy - cy)
        organ = ((u / rx) ** 2 + (v / ry) ** 2 + ((zz - cz) / rz) ** 2 <= 1.0) & inner
        label[organ] = value
        signal[organ] = organ_signal * rng.uniform(0.9, 1.1)
    texture = 1.0 + 0.06 * _smooth_field(rng, (8, 16, 20), SHAPE)
    bias = np.exp(0.25 * _smooth_field(rng, (2, 3, 3), SHAPE))
    blurred = ndimage.gaussian_filter(signal * texture, sigma=(0.4, 0.7, 0.7))
    scale = rng.uniform(500, 1500)  # MR has no absolute scale: normalisation must cope
    sigma = 0.035 * scale
    clean = blurred * bias * scale
    rician = np.sqrt((clean + rng.normal(0, sigma, SHAPE)) ** 2 + rng.normal(0, sigma, SHAPE) ** 2)
    return np.clip(rician, 0, 32767).astype(np.int16), label


def synthesize(out: Path, overwrite: bool = False, num_cases: int = 30, seed: int = 0, progress=None) -> ConversionSummary:
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(SHAPE[::-1], SPACING[::-1]))  # world (x, y, z) of voxel 0
    with RawDatasetBuilder(out, ".nii.gz", overwrite, progress) as builder:
        for index in range(num_cases):
            image, label = make_case(seed * 100_003 + index)
            geometry = dict(spacing=SPACING, origin=origin, direction=default_direction(3))
            case_id = f"demo_{index:03d}"
            builder.add_image(case_id, MedicalImage(image[None], **geometry))
            builder.add_label(case_id, MedicalImage(label[None], **geometry))
            builder.summary.num_training += 1
        return builder.finish(
            {
                "name": "AbdomenMRI-demo",
                "description": f"Synthetic abdominal MRI phantom (seed {seed}); stands in for AMOS MRI offline",
                "channel_names": {"0": "T2"},
                "labels": LABELS,
                "numTraining": num_cases,
                "file_ending": ".nii.gz",
                "synthetic": {"generator": "medseg_datasets.abdomen_mri_demo", "seed": seed},
            }
        )


RECIPE = register_recipe(
    Recipe(
        name="AbdomenMRI-demo",
        dataset_id=901,
        task_type="segmentation",
        summary="synthetic abdominal MRI phantom: liver, spleen, kidneys; anisotropic, bias field, Rician noise",
        source="none (synthetic; medseg datasets synth AbdomenMRI-demo)",
        synthesize=synthesize,
    )
)
