"""`medseg datasets convert MSD`: the real Decathlon Hippocampus release and a small synthetic
4D multi-modal task in the Decathlon layout, through the real CLI."""

import json

import nibabel as nib
import numpy as np
import pytest

from medseg.data.check import check_dataset
from medseg.io import MedicalImage, read_image, write_image
from medseg_datasets.msd import integer_label
from tests.conftest import run_cli


def test_hippocampus_release_converts_with_its_mixed_dtypes(shared_data, tmp_path):
    source = shared_data / "mr3d-hippocampus-msd-train"
    root = tmp_path / "root"
    result = run_cli("datasets", "convert", "MSD", "--src", source, root=root, check=True)
    output = root / "raw" / "Dataset004_Hippocampus"
    assert "208 training cases" in result.stdout and output.is_dir()
    description = json.loads((output / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "MRI"}
    assert description["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert description["numTraining"] == 208 and description["file_ending"] == ".nii.gz"
    assert len(list((output / "imagesTr").iterdir())) == 208 and not (output / "imagesTs").exists()

    float_labels = [p for p in sorted((source / "labelsTr").glob("*.nii.gz")) if nib.load(p).get_data_dtype().kind == "f"]
    assert float_labels, "the shared release keeps float32 labels: this test needs one"
    original = float_labels[0]
    converted = output / "labelsTr" / original.name
    assert nib.load(converted).get_data_dtype() == np.uint8
    before, after = read_image(original), read_image(converted)
    assert np.array_equal(before.array, after.array) and not before.geometry_differences(after)
    image = source / "imagesTr" / original.name
    assert (output / "imagesTr" / original.name.replace(".nii.gz", "_0000.nii.gz")).read_bytes() == image.read_bytes()

    report = check_dataset(output, workers=1)
    assert report.ok(strict=True), report.problems[:5]


def _case(rng, channels: int) -> tuple[MedicalImage, MedicalImage]:
    shape = (6, 10, 12)
    image = MedicalImage(rng.normal(size=(channels, *shape)).astype(np.float32), (3.0, 1.0, 1.5), (5.0, -2.0, 1.0), np.eye(3)[::-1])
    label = np.zeros((1, *shape), np.float32)
    label[0, 2:4, 3:7, 4:9] = 1
    label[0, 1:3, 1:3, 1:3] = 2
    return image, image.with_array(label)


def _decathlon_task(folder, rng, name="Tiny"):
    """A Task77_Tiny with 2-channel 4D images: four good training cases, one with a fractional
    label, one listed but missing, and one test image."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    training = []
    for index in range(6):
        file = f"tiny_{index:03d}.nii.gz"
        training.append({"image": f"./imagesTr/{file}", "label": f"./labelsTr/{file}"})
        if index == 5:
            continue  # listed, never written
        image, label = _case(rng, 2)
        if index == 4:
            label.array[0, 0, 0, 0] = 0.5
        write_image(image, folder / "imagesTr" / file)
        write_image(label, folder / "labelsTr" / file)
    write_image(_case(rng, 2)[0], folder / "imagesTs" / "tiny_100.nii.gz")
    (folder / "imagesTr" / "._tiny_000.nii.gz").write_bytes(b"\x00macOS resource fork")
    (folder / "dataset.json").write_text(json.dumps({
        "name": name, "modality": {"0": "FLAIR", "1": "T1w"}, "labels": {"0": "background", "1": "edema", "2": "tumour"},
        "numTraining": 6, "training": training, "test": ["./imagesTs/tiny_100.nii.gz"],
    }))


def test_multimodal_task_is_split_per_channel_and_bad_cases_are_listed(tmp_path):
    source = tmp_path / "Task77_Tiny"
    _decathlon_task(source, np.random.default_rng(0))
    root = tmp_path / "root"
    result = run_cli("datasets", "convert", "MSD", "--src", source, root=root, check=True)
    output = root / "raw" / "Dataset077_Tiny"
    assert "4 training cases, 1 test cases" in result.stdout
    assert "tiny_004.nii.gz: label holds non-integer values (e.g. 0.5)" in result.stdout
    assert "tiny_005.nii.gz: listed in dataset.json but missing" in result.stdout
    description = json.loads((output / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "FLAIR", "1": "T1w"}
    assert description["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    original = read_image(source / "imagesTr" / "tiny_002.nii.gz")
    for channel in range(2):
        split = read_image(output / "imagesTr" / f"tiny_002_{channel:04d}.nii.gz")
        assert split.num_channels == 1 and np.array_equal(split.array[0], original.array[channel])
        assert not split.geometry_differences(original.with_array(original.array[:1]))
    assert sorted(p.name for p in (output / "imagesTs").iterdir()) == ["tiny_100_0000.nii.gz", "tiny_100_0001.nii.gz"]
    assert not (output / "labelsTr" / "tiny_004.nii.gz").exists()
    assert check_dataset(output, workers=1).ok(strict=True)

    taken = run_cli("datasets", "convert", "MSD", "--src", source, "--id", "4", root=root)
    assert taken.returncode == 0, taken.stderr
    assert (root / "raw" / "Dataset004_Tiny").is_dir()
    again = run_cli("datasets", "convert", "MSD", "--src", source, root=root)
    assert again.returncode != 0 and "already exists; pass --overwrite" in again.stderr + again.stdout
    clash = tmp_path / "Task04_Other"
    _decathlon_task(clash, np.random.default_rng(1), name="Other")
    refused = run_cli("datasets", "convert", "MSD", "--src", clash, root=root)
    assert refused.returncode != 0 and "Dataset004_Tiny already has number 4: pass --id N" in refused.stderr + refused.stdout
    assert not (root / "raw" / "Dataset004_Other").exists()


def test_unusable_decathlon_folders_are_refused_naming_the_problem(tmp_path):
    (tmp_path / "Task05_Bad").mkdir()
    (tmp_path / "Task05_Bad" / "dataset.json").write_text(json.dumps({"labels": {"0": "background"}, "training": []}))
    result = run_cli("datasets", "convert", "MSD", "--src", tmp_path / "Task05_Bad", root=tmp_path / "root")
    assert result.returncode != 0 and "dataset.json: no 'modality'" in result.stderr + result.stdout
    unnamed = tmp_path / "renamed"
    _decathlon_task(unnamed, np.random.default_rng(2))
    result = run_cli("datasets", "convert", "MSD", "--src", unnamed, root=tmp_path / "root")
    assert result.returncode != 0 and "pass --id N" in result.stderr + result.stdout
    assert not (tmp_path / "root" / "raw").exists() or not any((tmp_path / "root" / "raw").iterdir())


@pytest.mark.parametrize("values, message", [
    ([0.0, 1.0, np.nan], "NaN or infinite"), ([0.0, -1.0], "negative"), ([0.0, 1.25], "non-integer values (e.g. 1.25)"),
])
def test_integer_label_refuses_values_that_are_not_classes(values, message):
    label = MedicalImage(np.array(values, np.float32).reshape(1, 1, 1, -1), (1.0,) * 3, (0.0,) * 3, np.eye(3))
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        integer_label(label, "x.nii.gz")


def test_integer_label_keeps_whole_float_values_as_unsigned_integers():
    label = MedicalImage(np.array([0, 1, 2, 300], np.float32).reshape(1, 1, 1, -1), (1.0,) * 3, (0.0,) * 3, np.eye(3))
    converted = integer_label(label, "x.nii.gz")
    assert converted.array.dtype == np.uint16 and converted.array.tolist() == [[[[0, 1, 2, 300]]]]
