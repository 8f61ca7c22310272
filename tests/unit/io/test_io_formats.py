"""Round trips through every writer, and agreement between the NIfTI and ITK readers."""

import numpy as np
import pytest

from medseg.errors import ImageReadError, ImageWriteError
from medseg.io import MedicalImage, read_image, write_image
from medseg.io.image import default_direction
from medseg.io.itk import read_itk
from medseg.io.nifti import read_nifti


def oblique_volume(dtype=np.int16, channels=1) -> MedicalImage:
    rng = np.random.default_rng(1)
    a = np.radians(25)
    rotation = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    array = (rng.random((channels, 5, 7, 9)) * 1000).astype(dtype)
    return MedicalImage(array, (4.0, 0.8, 0.6), (-12.5, 33.0, 101.0), rotation @ default_direction(3))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_volume_round_trip(tmp_path, suffix, dtype):
    image = oblique_volume(dtype)
    path = write_image(image, tmp_path / f"volume{suffix}")
    again = read_image(path)
    assert again.array.dtype == image.array.dtype
    assert np.array_equal(again.array, image.array)
    assert again.geometry_differences(image, tolerance_mm=1e-4) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_multichannel_volume_round_trip(tmp_path, suffix):
    image = oblique_volume(np.float32, channels=2)
    again = read_image(write_image(image, tmp_path / f"two{suffix}"))
    assert again.array.shape == (2, 5, 7, 9)
    assert np.array_equal(again.array, image.array)


@pytest.mark.parametrize(
    "suffix,dtype,channels",
    [(".png", np.uint8, 1), (".png", np.uint16, 1), (".png", np.uint8, 3), (".tif", np.float32, 1), (".bmp", np.uint8, 3)],
)
def test_2d_round_trip(tmp_path, suffix, dtype, channels):
    rng = np.random.default_rng(2)
    array = (rng.random((channels, 12, 17)) * 250).astype(dtype)
    image = MedicalImage(array, (1.0, 1.0), (0.0, 0.0), default_direction(2))
    again = read_image(write_image(image, tmp_path / f"plane{suffix}"))
    assert np.array_equal(again.array, array)


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 200, 32, dtype=np.uint8), (3, 32, 1))
    image = MedicalImage(smooth, (1.0, 1.0), (0.0, 0.0), default_direction(2))
    again = read_image(write_image(image, tmp_path / "plane.jpg"))
    assert again.array.shape == smooth.shape
    assert np.abs(again.array.astype(int) - smooth).mean() < 3


def test_2d_image_to_nifti_and_back(tmp_path):
    image = MedicalImage(np.arange(20, dtype=np.uint8).reshape(1, 4, 5), (1.0, 1.0), (0.0, 0.0), default_direction(2))
    again = read_image(write_image(image, tmp_path / "plane.nii.gz"))
    assert again.array.shape == (1, 1, 4, 5)
    assert np.array_equal(again.array[:, 0], image.array)


def test_failed_write_leaves_nothing(tmp_path):
    image = MedicalImage(np.full((1, 4, 4), 1e6, dtype=np.float64), (1.0, 1.0), (0.0, 0.0), default_direction(2))
    with pytest.raises(ImageWriteError, match="plane.png"):
        write_image(image, tmp_path / "plane.png")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_unknown_format(tmp_path):
    with pytest.raises(ImageWriteError, match="unknown|cannot write"):
        write_image(oblique_volume(), tmp_path / "volume.xyz")


def test_bad_files_give_errors_naming_the_file(tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_image(broken)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(truncated)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.nrrd")
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    with pytest.raises(ImageReadError, match="unknown image format"):
        read_image(odd)


def test_nifti_and_itk_readers_agree_on_real_files(shared_data):
    for name in ("example_ct_sm.nii.gz", "example_mr_sm.nii.gz"):
        path = shared_data / "ct-mr-totalsegmentator" / name
        by_nibabel, by_itk = read_nifti(path), read_itk(path)
        assert np.array_equal(by_nibabel.array, by_itk.array)
        assert by_nibabel.geometry_differences(by_itk, tolerance_mm=1e-3) == []


def test_real_nrrd_brain_mr_and_mask(shared_data):
    folder = shared_data / "mr-brain-pyradiomics"
    image = read_image(folder / "brain1_image.nrrd")
    mask = read_image(folder / "brain1_label.nrrd")
    assert image.spatial_shape == (25, 256, 256)
    assert image.geometry_differences(mask) == []
    assert set(np.unique(mask.array)) <= {0, 1} and mask.array.sum() > 0


def test_real_nifti_round_trip_through_nrrd(shared_data, tmp_path):
    image = read_image(shared_data / "ct-mr-totalsegmentator" / "example_mr_sm.nii.gz")
    again = read_image(write_image(image, tmp_path / "mr.nrrd"))
    assert np.array_equal(again.array, image.array)
    assert again.geometry_differences(image) == []
