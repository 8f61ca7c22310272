import numpy as np
import pytest

from medseg.io import MedicalImage, orientation_code, to_canonical
from medseg.io.image import default_direction


def rotation(angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_affine_maps_indices_to_world():
    image = MedicalImage(np.zeros((1, 4, 5, 6)), (3.0, 2.0, 1.0), (10.0, 20.0, 30.0), default_direction(3))
    # voxel (z=1, y=2, x=3) of an axial image sits at world (x, y, z) = origin + (3*1, 2*2, 1*3)
    assert np.allclose(image.affine @ [1, 2, 3, 1], [13.0, 24.0, 33.0, 1])
    assert orientation_code(image.direction) == "SPL"


def test_from_affine_round_trip_keeps_oblique_geometry():
    direction = rotation(20) @ default_direction(3)
    image = MedicalImage(np.zeros((1, 3, 4, 5)), (2.5, 0.7, 0.9), (-1.0, 2.0, 3.0), direction)
    again = MedicalImage.from_affine(image.array, image.affine)
    assert again.geometry_differences(image) == []


def test_rejects_mismatched_geometry():
    with pytest.raises(ValueError, match="geometry"):
        MedicalImage(np.zeros((1, 4, 5, 6)), (1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    with pytest.raises(ValueError, match="positive"):
        MedicalImage(np.zeros((1, 4, 5)), (0.0, 1.0), (0.0, 0.0), np.eye(2))


def test_to_canonical_undoes_permutation_and_flip():
    rng = np.random.default_rng(0)
    image = MedicalImage(rng.random((1, 3, 4, 5)), (3.0, 2.0, 1.0), (5.0, 6.0, 7.0), default_direction(3))
    # the same voxels stored as (X, Z, Y) with Y flipped
    array = np.flip(np.transpose(image.array, (0, 3, 1, 2)), axis=3)
    affine = image.affine[:, [2, 0, 1, 3]].copy()
    affine[:3, 3] += affine[:3, 2] * (4 - 1)
    affine[:3, 2] *= -1
    shuffled = MedicalImage.from_affine(np.ascontiguousarray(array), affine)
    assert orientation_code(shuffled.direction) != "SPL"
    canonical = to_canonical(shuffled)
    assert np.array_equal(canonical.array, image.array)
    assert canonical.geometry_differences(image) == []


def test_geometry_differences_names_each_mismatch():
    a = MedicalImage(np.zeros((1, 4, 5, 6)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), default_direction(3))
    b = MedicalImage(np.zeros((1, 4, 5, 6)), (2.0, 1.0, 1.0), (0.0, 5.0, 0.0), default_direction(3))
    problems = a.geometry_differences(b)
    assert any("spacing" in p for p in problems) and any("origin" in p for p in problems)
    c = MedicalImage(np.zeros((1, 4, 5, 7)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), default_direction(3))
    assert "shape" in a.geometry_differences(c)[0]
