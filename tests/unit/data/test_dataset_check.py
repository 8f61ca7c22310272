"""`medseg datasets check` on a good and a deliberately broken dataset: every problem, named by file."""

import json
import shutil

import numpy as np
import pytest

from medseg.data.check import check_dataset
from medseg.io import MedicalImage, read_image, write_image
from medseg.io.image import default_direction
from medseg_datasets.abdomen_mri_demo import synthesize
from tests.conftest import run_cli


def volume(array, spacing=(3.0, 1.0, 1.0)) -> MedicalImage:
    return MedicalImage(np.asarray(array)[None], spacing, (0.0, 0.0, 0.0), default_direction(3))


@pytest.fixture
def two_channel_dataset(tmp_path):
    """A valid 2-channel segmentation dataset of 6 cases in the nnU-Net v2 layout."""
    folder = tmp_path / "Dataset100_Broken"
    rng = np.random.default_rng(0)
    for index in range(6):
        case = f"case_{index:03d}"
        for channel in range(2):
            write_image(volume(rng.random((4, 8, 8)).astype(np.float32)), folder / "imagesTr" / f"{case}_{channel:04d}.nii.gz")
        label = np.zeros((4, 8, 8), dtype=np.uint8)
        label[1:3, 2:6, 2:6] = 1 + index % 2
        write_image(volume(label), folder / "labelsTr" / f"{case}.nii.gz")
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "T1", "1": "T2"},
                "labels": {"background": 0, "tumour": 1, "oedema": 2},
                "numTraining": 6,
                "file_ending": ".nii.gz",
            }
        )
    )
    return folder


def test_valid_dataset_passes(two_channel_dataset):
    report = check_dataset(two_channel_dataset, workers=1)
    assert report.num_cases == 6 and report.problems == []


def test_broken_dataset_reports_every_problem(two_channel_dataset):
    folder = two_channel_dataset
    images, labels = folder / "imagesTr", folder / "labelsTr"
    (images / "case_000_0001.nii.gz").unlink()  # missing channel
    write_image(volume(np.zeros((4, 8, 8), np.uint8), spacing=(2.0, 1.0, 1.0)), labels / "case_001.nii.gz")  # geometry
    write_image(volume(np.full((4, 8, 8), 7, np.uint8)), labels / "case_002.nii.gz")  # undeclared label value 7
    nan_image = read_image(images / "case_003_0000.nii.gz")
    nan_image.array[0, 0, 0, 0] = np.nan
    write_image(nan_image, images / "case_003_0000.nii.gz")  # NaN
    (images / "case_004_0001.nii.gz").write_bytes(b"garbage")  # unreadable
    write_image(volume(np.zeros((4, 8, 8), np.uint8)), labels / "case_005.nii.gz")  # empty label (warning)
    for channel in range(2):  # duplicate case: same images as case_004 channel 0 ... and case_005
        shutil.copy(images / f"case_005_{channel:04d}.nii.gz", images / f"case_006_{channel:04d}.nii.gz")
    shutil.copy(labels / "case_004.nii.gz", labels / "case_006.nii.gz")
    shutil.copy(labels / "case_004.nii.gz", labels / "orphan.nii.gz")  # label without images
    (images / "case_007.nii.gz").write_bytes(b"")  # bad file name

    report = check_dataset(folder, workers=2)
    text = "\n".join(str(p) for p in report.problems)
    expected = [
        ("case_000", "missing channel(s) _0001"),
        ("case_001.nii.gz", "geometry differs"),
        ("case_002.nii.gz", "label value(s) [7] not declared"),
        ("case_003_0000.nii.gz", "1 NaN/Inf voxel(s)"),
        ("case_004_0001.nii.gz", "not a readable NIfTI"),
        ("case_005.nii.gz", "empty label map"),
        ("case_006_0000.nii.gz", "duplicate case: same image content as case 'case_005'"),
        ("orphan.nii.gz", "label without images"),
        ("case_007.nii.gz", "4-digit channel index"),
        ("dataset.json", "numTraining is 6 but imagesTr holds 7 cases"),
    ]
    for file_name, message in expected:
        assert any(file_name in p.message and message in p.message for p in report.problems), (file_name, message, text)
    assert [p.severity for p in report.problems if "case_005.nii.gz" in p.message] == ["warning"]
    assert not report.ok()


def test_broken_dataset_json_is_reported(tmp_path):
    folder = tmp_path / "Dataset101_Bad"
    folder.mkdir()
    (folder / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"liver": 1}}')
    messages = [p.message for p in check_dataset(folder).problems]
    assert any("file_ending" in m for m in messages)
    assert any("background as 0" in m for m in messages)
    (folder / "dataset.json").write_text("{not json")
    assert "not valid JSON" in check_dataset(folder).problems[0].message


def test_cli_check_exit_codes_and_listing(two_channel_dataset, tmp_path):
    good = run_cli("datasets", "check", two_channel_dataset)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "0 error(s)" in good.stdout
    (two_channel_dataset / "imagesTr" / "case_002_0000.nii.gz").unlink()
    (two_channel_dataset / "labelsTr" / "case_003.nii.gz").unlink()
    bad = run_cli("datasets", "check", two_channel_dataset)
    assert bad.returncode == 1
    assert "case_002: missing channel(s) _0000" in bad.stdout
    assert "case_003.nii.gz: missing file" in bad.stdout
    assert "2 error(s)" in bad.stdout


def test_classification_table_problems(tmp_path):
    folder = tmp_path / "Dataset102_Cls"
    image = MedicalImage(np.zeros((1, 4, 4), np.uint8), (1.0, 1.0), (0.0, 0.0), default_direction(2))
    for case in ("a", "b", "c"):
        write_image(image.with_array(np.full((1, 4, 4), ord(case), np.uint8)), folder / "imagesTr" / f"{case}_0000.png")
    (folder / "dataset.json").write_text(
        json.dumps({"task": "classification", "channel_names": {"0": "X"}, "classes": ["x", "y"], "multi_label": True, "file_ending": ".png"})
    )
    (folder / "labelsTr.csv").write_text("case,x,y\na,1,0\na,0,1\nb,2,0\nz,0,0\n")
    messages = [p.message for p in check_dataset(folder, workers=1).problems]
    assert any("labelsTr.csv:3: duplicate case 'a'" in m for m in messages)
    assert any("labelsTr.csv:4: class columns ['x'] must be 0 or 1" in m for m in messages)
    assert any("case 'z' has no images" in m for m in messages)
    assert any("case 'c' in imagesTr has no row" in m for m in messages)
    # multi-class: a label outside the declared classes, and a NaN where a class name belongs
    (folder / "dataset.json").write_text(
        json.dumps({"task": "classification", "channel_names": {"0": "X"}, "classes": ["x", "y"], "multi_label": False, "file_ending": ".png"})
    )
    (folder / "labelsTr.csv").write_text("case,label\na,x\nb,polyp\nc,nan\n")
    messages = [p.message for p in check_dataset(folder, workers=1).problems]
    assert any("labelsTr.csv:3: label 'polyp' is not one of the declared classes" in m for m in messages)
    assert any("labelsTr.csv:4: label 'nan' is not one of the declared classes" in m for m in messages)


def test_demo_dataset_is_deterministic_and_valid(tmp_path):
    first = synthesize(tmp_path / "one", num_cases=3, seed=5)
    second = synthesize(tmp_path / "two", num_cases=3, seed=5)
    for name in ("imagesTr/demo_002_0000.nii.gz", "labelsTr/demo_002.nii.gz"):
        assert np.array_equal(read_image(first.output / name).array, read_image(second.output / name).array)
    image = read_image(first.output / "imagesTr/demo_000_0000.nii.gz")
    label = read_image(first.output / "labelsTr/demo_000.nii.gz")
    assert image.spacing[0] > 1.5 * image.spacing[1]  # anisotropic: thick slices
    assert set(np.unique(label.array)) == {0, 1, 2, 3, 4}
    assert check_dataset(first.output, workers=1).ok(strict=True)
    other = synthesize(tmp_path / "three", num_cases=1, seed=6)
    assert not np.array_equal(read_image(other.output / "imagesTr/demo_000_0000.nii.gz").array, image.array)
