"""The one image type of medseg: voxels plus the geometry that places them in the patient.

Axis convention (used everywhere in medseg):

* ``array`` has shape ``(C, *spatial)``: ``(C, Z, Y, X)`` for 3D, ``(C, Y, X)`` for 2D. The channel
  axis is always present (``C == 1`` for a grayscale image). Spatial axes run slowest to fastest,
  which is NumPy/PyTorch order (``D, H, W``) and the reverse of ITK/NIfTI index order.
* ``spacing[i]`` is the voxel size in mm along spatial array axis ``i``.
* World coordinates are DICOM/ITK patient coordinates, LPS (x to the patient's left, y to posterior,
  z to superior), in mm. 2D images have a 2D world ``(x, y)``.
* ``direction[:, i]`` is the unit world vector along spatial array axis ``i``; ``origin`` is the
  world position of the centre of voxel index ``(0, ..., 0)``.
* ``affine`` maps homogeneous array indices ``(i0, i1, i2, 1)`` to world LPS ``(x, y, z, 1)``.

An axial image in the usual orientation therefore has ``direction`` equal to the anti-diagonal
identity: axis 0 (Z) runs along world z, axis 2 (X) along world x.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


def default_direction(ndim: int) -> np.ndarray:
    """Direction of an image with no orientation information: array axes (.., Y, X) -> world (x, y, ..)."""
    return np.eye(ndim)[::-1].copy()


@dataclass
class MedicalImage:
    """Voxels ``array: (C, *spatial)`` with spacing, origin and direction in array-axis order."""

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ndim = self.array.ndim - 1
        if ndim not in (2, 3):
            raise ValueError(f"array must be (C, Y, X) or (C, Z, Y, X), got shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64)
        if len(self.spacing) != ndim or len(self.origin) != ndim or self.direction.shape != (ndim, ndim):
            raise ValueError(
                f"geometry does not match a {ndim}D array: spacing {self.spacing}, origin {self.origin}, "
                f"direction shape {self.direction.shape}"
            )
        if min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")

    # ----------------------------------------------------------------------------------- shape
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.array.ndim - 1

    @property
    def num_channels(self) -> int:
        return self.array.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[1:])

    # -------------------------------------------------------------------------------- geometry
    @property
    def affine(self) -> np.ndarray:
        """(ndim+1, ndim+1) matrix: array index -> world LPS mm."""
        n = self.ndim
        affine = np.eye(n + 1)
        affine[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        affine[:n, n] = self.origin
        return affine

    @classmethod
    def from_affine(cls, array: np.ndarray, affine: np.ndarray, metadata: dict[str, Any] | None = None) -> "MedicalImage":
        n = array.ndim - 1
        linear = np.asarray(affine, dtype=np.float64)[:n, :n]
        spacing = np.linalg.norm(linear, axis=0)
        return cls(array, tuple(spacing), tuple(affine[:n, n]), linear / spacing[None, :], dict(metadata or {}))

    def with_array(self, array: np.ndarray) -> "MedicalImage":
        """Same geometry and metadata, new voxels (same spatial shape)."""
        if tuple(array.shape[1:]) != self.spatial_shape:
            raise ValueError(f"spatial shape {array.shape[1:]} differs from {self.spatial_shape}")
        return replace(self, array=array, metadata=dict(self.metadata))

    def geometry_differences(self, other: "MedicalImage", tolerance_mm: float = 1e-3, names: tuple[str, str] = ("", "")) -> list[str]:
        """Human-readable list of geometry mismatches (empty when the two grids coincide). ``names``
        label the two values in each message, this image's first: "spacing (1, 1) (image) vs (2, 2) (label)"."""
        mine, theirs = (f" ({name})" if name else "" for name in names)
        problems = []

        def mismatch(what: str, a, b) -> str:
            return f"{what} {a}{mine} vs {b}{theirs}"

        if self.spatial_shape != other.spatial_shape:
            return [mismatch("shape", self.spatial_shape, other.spatial_shape)]
        if not np.allclose(self.spacing, other.spacing, atol=tolerance_mm, rtol=1e-4):
            problems.append(mismatch("spacing", _fmt(self.spacing), _fmt(other.spacing)))
        if not np.allclose(self.origin, other.origin, atol=max(tolerance_mm, 1e-4 * max(self.spacing))):
            problems.append(mismatch("origin", _fmt(self.origin), _fmt(other.origin)))
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            problems.append("direction differs")
        return problems

    def __repr__(self) -> str:
        return (
            f"MedicalImage(shape={self.array.shape}, dtype={self.array.dtype}, spacing={_fmt(self.spacing)}, "
            f"origin={_fmt(self.origin)}, orientation={orientation_code(self.direction)})"
        )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


_LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))


def orientation_code(direction: np.ndarray) -> str:
    """Letters naming where each array axis points, e.g. 'SPL' for a standard axial (Z, Y, X) image."""
    direction = np.asarray(direction)
    if direction.shape[0] != 3:
        return "2D"
    letters = []
    for axis in range(3):
        column = direction[:, axis]
        world = int(np.argmax(np.abs(column)))
        letters.append(_LPS_LETTERS[world][int(column[world] > 0)])
    return "".join(letters)


def left_right_axis(direction: np.ndarray) -> int | None:
    """Array axis whose world direction is mostly along x (patient right-left), if clearly one."""
    direction = np.asarray(direction, dtype=float)
    if direction.shape[0] < 3:
        return None  # 2D images carry no patient orientation
    along_x = np.abs(direction[0])
    axis = int(np.argmax(along_x))
    return axis if along_x[axis] > 0.8 else None


def to_canonical(image: MedicalImage) -> MedicalImage:
    """Permute and flip array axes (no resampling) so axis i points along the closest world axis.

    3D result: axes (Z, Y, X) pointing to (S, P, L), i.e. direction close to the anti-diagonal identity.
    Useful to compare two images that store the same voxels in different axis orders.
    """
    n = image.ndim
    direction = image.direction
    # world axis that each array axis follows most closely; canonical position = reversed world order
    world_of_axis = [int(np.argmax(np.abs(direction[:, a]))) for a in range(n)]
    if sorted(world_of_axis) != list(range(n)):
        raise ValueError(f"oblique image with ambiguous axes: direction {direction.tolist()}")
    order = [world_of_axis.index(w) for w in reversed(range(n))]  # new axis k <- old axis order[k]
    array = np.transpose(image.array, [0] + [a + 1 for a in order])
    affine = image.affine
    new_affine = np.eye(n + 1)
    new_affine[:, :n] = affine[:, order]
    new_affine[:, n] = affine[:, n]
    shape = array.shape[1:]
    for k in range(n):
        if new_affine[n - 1 - k, k] < 0:  # axis k points against its world axis: flip it
            array = np.flip(array, axis=k + 1)
            new_affine[:n, n] += new_affine[:n, k] * (shape[k] - 1)
            new_affine[:n, k] *= -1
    return MedicalImage.from_affine(np.ascontiguousarray(array), new_affine, image.metadata)
