"""DICOM series against real files: dicom2nifti references, known-bad series, compressed syntaxes."""

import shutil

import numpy as np
import pytest

from medseg.errors import DicomSeriesError, ImageReadError
from medseg.io import read_image, to_canonical
from medseg.io.dicom import scan_folder, select_series

REFERENCE_SERIES = [
    "anatomical/001",
    "anatomical/001_implicit",
    "ge/anatomical/001",
    "ge/anatomical/001_implicit",
    "ge/anatomical/001_single_slice",
    "siemens/anatomical/001",
    "siemens/anatomical/001_implicit",
    "philips_enhanced/anatomical/001",
    "philips_enhanced/anatomical/001_implicit",
    "failing/slicecount/001",  # two slices: dicom2nifti refuses by policy; it is a valid volume
]


@pytest.mark.parametrize("series", REFERENCE_SERIES)
def test_matches_dicom2nifti_reference(shared_data, series):
    root = shared_data / "dicom-series-dicom2nifti"
    ours = to_canonical(read_image(root / series))
    reference = to_canonical(read_image(root / f"{series}_ground_truth.nii.gz"))
    assert ours.array.shape == reference.array.shape
    if ours.array.dtype.kind == "f":  # Philips: rescale slope applied, float32 rounding
        np.testing.assert_allclose(ours.array, reference.array, rtol=1e-6, atol=1e-3)
    else:
        assert np.array_equal(ours.array, reference.array)
    assert np.abs(ours.affine - reference.affine).max() < 1e-3


@pytest.mark.parametrize(
    "series,message",
    [
        ("failing/gantrytilting/001", r"gantry tilt of 14\.00 degrees"),
        ("failing/notavolume/001", r"not a volume: 4 slices share a position"),
        ("failing/sliceincrement/001", r"missing slices: a gap of 10 mm \(1 slice\(s\) missing\)"),
        ("failing/sliceincrement/002", r"gantry tilt"),
        ("failing/sliceorientation/001", r"mixed slice orientations \(2 slices at .*2 slices at"),
    ],
)
def test_failing_series_give_clear_errors(shared_data, series, message):
    with pytest.raises(DicomSeriesError, match=message) as caught:
        read_image(shared_data / "dicom-series-dicom2nifti" / series)
    assert caught.value.series.endswith("]")  # the error names the series (number, description, UID)


def test_uneven_spacing_series_refused(shared_data):
    with pytest.raises(DicomSeriesError, match="Routine Brain.*missing slices"):
        read_image(shared_data / "dicom-monai" / "CT_DICOM")


def test_empty_uid_jpeg2000_ct_matches_its_segmentation(shared_data):
    folder = shared_data / "ct-mr-totalsegmentator"
    scan = scan_folder(folder / "example_ct_dicom")
    assert len(scan.series) == 1 and scan.series[0].key.startswith("no-uid-")
    assert "SeriesInstanceUID is empty" in scan.series[0].notes[0]
    ct = read_image(folder / "example_ct_dicom")
    assert ct.spatial_shape == (20, 512, 512)
    assert ct.array.dtype == np.int16 and ct.array.min() < -900  # Hounsfield units after rescale
    segmentation = read_image(folder / "example_seg_dicom.nii.gz")
    assert to_canonical(ct).geometry_differences(to_canonical(segmentation)) == []


def test_slices_ordered_by_position_not_file_name(shared_data, tmp_path):
    source = shared_data / "dicom-seg-dcmqi" / "segmentations" / "ct-3slice"
    expected = read_image(source)
    for index, name in enumerate(["01.dcm", "02.dcm", "03.dcm"]):
        shutil.copy(source / name, tmp_path / f"{'cba'[index]}.dcm")  # reversed alphabetical order
    again = read_image(tmp_path)
    assert np.array_equal(again.array, expected.array)
    # the lowest slice (originally 03.dcm, now a.dcm) comes first in both cases
    assert again.metadata["source_files"][0].endswith("a.dcm")
    assert expected.metadata["source_files"][0].endswith("03.dcm")


def test_folder_with_several_series_and_non_images(shared_data, tmp_path):
    root = shared_data / "dicom-series-dicom2nifti"
    shutil.copytree(root / "anatomical" / "001", tmp_path / "mr")
    shutil.copytree(shared_data / "dicom-seg-dcmqi" / "segmentations" / "ct-3slice", tmp_path / "ct")
    shutil.copy(shared_data / "dicom-seg-highdicom" / "seg_image_ct_binary.dcm", tmp_path / "seg.dcm")
    (tmp_path / "notes.txt").write_text("not dicom")
    scan = scan_folder(tmp_path)
    assert [s.num_frames for s in scan.series] == [4, 3]
    assert [kind for _, kind in scan.non_image] == ["Segmentation"]
    assert [path.name for path, _ in scan.skipped] == ["notes.txt"]
    with pytest.raises(ImageReadError, match="holds 2 image series"):
        read_image(tmp_path)
    assert read_image(tmp_path, series="largest").spatial_shape == (4, 256, 256)
    assert read_image(tmp_path, series="1").spatial_shape == (3, 512, 512)
    ct_uid = scan.series[1].uid
    assert select_series(scan, ct_uid) is scan.series[1]
    with pytest.raises(ImageReadError, match="matches 0 series"):
        select_series(scan, "description:nothing-like-this")


def test_enhanced_multiframe_geometry(shared_data):
    image = read_image(shared_data / "dicom-series-dicom2nifti" / "philips_enhanced" / "anatomical" / "001")
    assert image.spatial_shape == (8, 256, 256)
    assert image.array.dtype == np.float32  # per-frame rescale slope 4.2588
    assert image.spacing[0] == pytest.approx(1.2, abs=1e-4)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"])
def test_compressed_syntaxes_decode_losslessly(name):
    pydicom_data = pytest.importorskip("pydicom.data")
    local = {p.rsplit("/", 1)[-1]: p for p in pydicom_data.get_testdata_files()}
    reference = read_image(local["MR_small.dcm"])
    image = read_image(local[name])
    assert np.array_equal(image.array, reference.array)
    assert image.geometry_differences(reference) == []


def test_jpeg_lossless_rgb_projection_image():
    pydicom_data = pytest.importorskip("pydicom.data")
    local = {p.rsplit("/", 1)[-1]: p for p in pydicom_data.get_testdata_files()}
    lossless = read_image(local["SC_rgb_jpeg_gdcm.dcm"])  # JPEG lossless, process 14 SV1
    assert lossless.array.shape == (3, 100, 100)
    assert np.array_equal(lossless.array, read_image(local["SC_rgb_rle.dcm"]).array)


def test_empty_folder_and_non_dicom_files(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="no DICOM image series found"):
        read_image(tmp_path)
