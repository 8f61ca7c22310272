"""Dataset recipes on the real shared data (DSB2018, Kvasir-SEG, NIH-1000) and on small trees in the
published layouts of the releases that cannot be shipped (AMOS, REAL-Colon, SUN)."""

import csv
import gzip
import json
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from medseg.data.check import check_dataset
from medseg.errors import DatasetError
from medseg.io import MedicalImage, read_image, write_image
from medseg.io.image import default_direction
from medseg_datasets import get_recipe, list_recipes
from tests.conftest import run_cli


def subset(source, target, names):
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target / name).symlink_to(source / name)
    return target


def test_every_recipe_is_listed():
    names = {r.name for r in list_recipes()}
    assert {"AbdomenMRI", "AbdomenMRI-demo", "DSB2018", "KvasirSEG", "ChestXray14", "PolypSize", "KermanyPneumonia", "KermanyPneumonia3"} <= names
    listing = run_cli("datasets", "list", check=True).stdout
    assert all(name in listing for name in names)


def test_dsb2018_instances_and_semantic_labels(shared_data, tmp_path):
    source = shared_data / "microscopy-dsb2018" / "stage1_train"
    names = sorted(p.name for p in source.iterdir())[:12]
    src = subset(source, tmp_path / "src" / "stage1_train", names)
    summary = get_recipe("DSB2018").convert(src.parent, tmp_path / "Dataset002_DSB2018")
    assert summary.num_training == 12 and not summary.skipped
    case = names[0]
    instances = read_image(summary.output / "instancesTr" / f"{case}.png").array[0]
    assert instances.max() == len(list((source / case / "masks").glob("*.png")))
    label = read_image(summary.output / "labelsTr" / f"{case}.png").array[0]
    assert np.array_equal(label, (instances > 0).astype(np.uint8))
    assert read_image(summary.output / "imagesTr" / f"{case}_0000.png").num_channels == 3
    report = check_dataset(summary.output, workers=1)
    assert report.ok(strict=True), report.problems


def test_kvasir_conversion_thresholds_jpeg_masks(shared_data, tmp_path):
    source = shared_data / "endoscopy-kvasir-seg"
    names = sorted(p.name for p in (source / "images").iterdir())[:10]
    subset(source / "images", tmp_path / "src" / "images", names)
    subset(source / "masks", tmp_path / "src" / "masks", names)
    summary = get_recipe("KvasirSEG").convert(tmp_path / "src", tmp_path / "out")
    assert summary.num_training == 10
    case = names[0].rsplit(".", 1)[0]
    mask = read_image(source / "masks" / names[0]).array.max(axis=0)
    label = read_image(summary.output / "labelsTr" / f"{case}.png").array[0]
    assert np.array_equal(label, (mask > 127).astype(np.uint8))
    assert check_dataset(summary.output, workers=1).ok(strict=True)


def test_kvasir_bad_case_is_skipped_not_fatal(shared_data, tmp_path):
    source = shared_data / "endoscopy-kvasir-seg"
    names = sorted(p.name for p in (source / "images").iterdir())[:3]
    subset(source / "images", tmp_path / "src" / "images", names)
    subset(source / "masks", tmp_path / "src" / "masks", names[:2])  # third mask missing
    (tmp_path / "src" / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really")
    summary = get_recipe("KvasirSEG").convert(tmp_path / "src", tmp_path / "out")
    assert summary.num_training == 2
    reasons = " ".join(reason for _, reason in summary.skipped)
    assert "no mask" in reasons and "corrupt.jpg" in reasons


def test_chestxray14_full_nih1000_via_cli(shared_data, tmp_path):
    out = tmp_path / "Dataset004_ChestXray14"
    run_cli("datasets", "convert", "ChestXray14", "--src", shared_data / "xray-nih-chestxray14-64px", "--out", out, check=True)
    with (out / "labelsTr.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 800 and len(list((out / "imagesTs").iterdir())) == 200
    assert {row["split"] for row in rows} == {"train", "valid"}
    with gzip.open(shared_data / "xray-nih-chestxray14-64px" / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        truth = {row["Image Index"]: row["Finding Labels"] for row in csv.DictReader(handle)}
    for row in rows[:50]:
        findings = {name for name in truth[row["case"] + ".png"].split("|") if name != "No Finding"}
        assert {c for c in json.loads((out / "dataset.json").read_text())["classes"] if row[c] == "1"} == findings
    checked = run_cli("datasets", "check", out)
    assert checked.returncode == 0, checked.stdout


def test_conversion_never_overwrites_and_never_leaves_partial_output(shared_data, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run_cli("datasets", "convert", "KvasirSEG", "--src", shared_data / "endoscopy-kvasir-seg", "--out", out)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "precious"
    empty_src = tmp_path / "empty"
    (empty_src / "images").mkdir(parents=True)
    (empty_src / "masks").mkdir()
    with pytest.raises(DatasetError, match="no training case"):
        get_recipe("KvasirSEG").convert(empty_src, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def _nifti(path, array, spacing=(2.0, 1.0, 1.0)):
    write_image(MedicalImage(array[None], spacing, (0.0, 0.0, 0.0), default_direction(3)), path)


def test_amos_mri_cases_selected_from_release_layout(tmp_path):
    src = tmp_path / "amos22"
    rng = np.random.default_rng(0)
    for folder, case_ids in (("Tr", [1, 507, 510]), ("Va", [2, 520]), ("Ts", [3, 530])):
        for case_id in case_ids:
            _nifti(src / f"images{folder}" / f"amos_{case_id:04d}.nii.gz", rng.random((3, 6, 6)).astype(np.float32))
            if folder != "Ts":
                label = np.zeros((3, 6, 6), np.uint8)
                label[1, 2:4, 2:4] = 6
                spacing = (3.0, 1.0, 1.0) if case_id == 510 else (2.0, 1.0, 1.0)  # 510: label off-grid
                _nifti(src / f"labels{folder}" / f"amos_{case_id:04d}.nii.gz", label, spacing)
    (src / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "spleen", "6": "liver"}}))
    summary = get_recipe("AbdomenMRI").convert(src, tmp_path / "Dataset001_AbdomenMRI")
    assert summary.num_training == 2 and summary.num_test == 1  # CT cases (< 501) excluded
    assert [reason for _, reason in summary.skipped][0].count("geometry differs") == 1
    description = json.loads((summary.output / "dataset.json").read_text())
    assert description["labels"] == {"background": 0, "spleen": 1, "liver": 6}
    assert sorted(p.name for p in (summary.output / "imagesTr").iterdir()) == ["amos_0507_0000.nii.gz", "amos_0520_0000.nii.gz"]
    assert check_dataset(summary.output, workers=1).ok(strict=True)


def _jpeg(path, height=120, width=160, value=100):
    array = np.full((3, height, width), value, np.uint8)
    write_image(MedicalImage(array, (1.0, 1.0), (0.0, 0.0), default_direction(2)), path)


def test_polyp_size_from_real_colon_layout(tmp_path, monkeypatch):
    import medseg_datasets.polyp_size as polyp_size

    monkeypatch.setattr(polyp_size, "FRAME_STEP", 1)
    src = tmp_path / "real-colon"
    (src / "001-001_frames").mkdir(parents=True)
    (src / "001-001_annotation").mkdir()
    for frame in range(3):
        name = f"001-001_{frame}"
        _jpeg(src / "001-001_frames" / f"{name}.jpg", height=1080, width=1240, value=50 + 40 * frame)
        root = ElementTree.Element("annotation")
        ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
        objects = 2 if frame == 2 else 1  # a frame with two lesions is not a single-size example
        for _ in range(objects):
            obj = ElementTree.SubElement(root, "object")
            ElementTree.SubElement(obj, "unique_id").text = "001-001_1"
            box = ElementTree.SubElement(obj, "bndbox")
            for key, value in (("xmin", 540), ("xmax", 1196), ("ymin", 852), ("ymax", 1070)):
                ElementTree.SubElement(box, key).text = str(value)
        ElementTree.ElementTree(root).write(src / "001-001_annotation" / f"{name}.xml")
    (src / "lesion_info.csv").write_text("unique_object_id,unique_video_name,size [mm],histology_class\n001-001_1,001-001,12,AD\n")
    summary = get_recipe("PolypSize").convert(src, tmp_path / "out")
    assert summary.num_training == 2
    with (summary.output / "labelsTr.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["label"] for row in rows} == {"large"} and rows[0]["group"] == "001-001"
    assert max(read_image(summary.output / "imagesTr" / f"{rows[0]['case']}_0000.png").spatial_shape) == 512
    assert check_dataset(summary.output, workers=1).ok(strict=True)


def test_polyp_size_from_sun_layout(tmp_path, monkeypatch):
    import medseg_datasets.polyp_size as polyp_size

    monkeypatch.setattr(polyp_size, "FRAME_STEP", 1)
    src = tmp_path / "sun"
    for case, clip in (("case1", "case1_1"), ("case2", "case2_3"), ("case9", "case9_1")):
        _jpeg(src / "TrainDataset" / "Frame" / clip / "frame_00001.jpg", value=int(case[4:]) * 20)
        mask = np.zeros((1, 120, 160), np.uint8)
        mask[0, 10:20, 30:50] = 255
        write_image(MedicalImage(mask, (1.0, 1.0), (0.0, 0.0), default_direction(2)), src / "TrainDataset" / "GT" / clip / "frame_00001.png")
    (src / "polyp_sizes.csv").write_text("case,size_mm\ncase1,3\ncase2,7\n")
    summary = get_recipe("PolypSize").convert(src, tmp_path / "out")
    with (summary.output / "labelsTr.csv").open() as handle:
        rows = {row["group"]: row for row in csv.DictReader(handle)}
    assert rows["case1"]["label"] == "diminutive" and rows["case2"]["label"] == "small"
    assert rows["case1"]["box_xyxy"] == "30 10 49 19"
    assert "case9" in summary.skipped[0][1]


def test_kvasir_polyp_size_proxy_bins_by_area_tertile(shared_data, tmp_path):
    source = shared_data / "endoscopy-kvasir-seg"
    names = sorted(p.name for p in (source / "images").iterdir())[:30]
    src = tmp_path / "src"
    subset(source / "images", src / "images", names)
    subset(source / "masks", src / "masks", names[:-1])
    out = tmp_path / "Dataset006_KvasirPolypSize"
    summary = get_recipe("KvasirPolypSize").convert(src, out)
    assert summary.num_training == 29 and len(summary.skipped) == 1  # the frame without a mask is reported
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["task"] == "classification" and dataset["classes"] == ["small_area", "medium_area", "large_area"]
    with open(out / "labelsTr.csv") as handle:
        rows = list(csv.DictReader(handle))
    counts = {name: sum(row["label"] == name for row in rows) for name in dataset["classes"]}
    assert sorted(counts.values()) == [9, 10, 10]  # tertiles
    low, high = dataset["cut_points"]
    for row in rows:
        fraction = float(row["area_fraction"])
        assert row["label"] == ("small_area" if fraction < low else "medium_area" if fraction < high else "large_area")
    assert run_cli("datasets", "check", out, check=True).returncode == 0


def _kermany_subset(shared_data, tmp_path):
    """A few real files in the release layout, with a planted duplicate and a duplicate that disagrees on the class."""
    import shutil

    source = shared_data / "xray-pneumonia-kermany-train" / "train"
    normal, pneumonia = sorted((source / "NORMAL").iterdir())[:4], sorted((source / "PNEUMONIA").iterdir())
    chosen = [p for p in pneumonia if "bacteria" in p.name][:3] + [p for p in pneumonia if "virus" in p.name][:3]
    src = tmp_path / "kermany"
    for split, files in (("train", normal[:3] + chosen[:5]), ("test", [normal[3], chosen[5]])):
        for path in files:
            (src / split / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, src / split / path.parent.name / path.name)
    shutil.copy(normal[0], src / "train" / "NORMAL" / "IM-9999-0001.jpeg")  # the same pixels again, another name
    shutil.copy(normal[1], src / "train" / "PNEUMONIA" / "person9999_virus_1.jpeg")  # the same pixels, the other class
    return src, normal, chosen


def test_kermany_pneumonia_groups_patients_and_keeps_each_duplicate_once(shared_data, tmp_path):
    src, normal, chosen = _kermany_subset(shared_data, tmp_path)
    out = tmp_path / "Dataset007_KermanyPneumonia"
    result = run_cli("datasets", "convert", "KermanyPneumonia", "--src", src, "--out", out, check=True)
    assert "skipped 3 source case(s)" in result.stdout and "IM-9999-0001.jpeg" in result.stdout
    with (out / "labelsTr.csv").open() as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 2 + 5  # normal[1] and its twin in PNEUMONIA disagree: both dropped; IM-9999 is normal[0] again
    assert rows[f"normal_{normal[0].stem}"]["group"] == normal[0].stem.rsplit("-", 1)[0] and rows[f"normal_{normal[0].stem}"]["label"] == "normal"
    first = chosen[0]
    assert rows[f"pneumonia_{first.stem}"]["group"] == first.stem.split("_")[0] and rows[f"pneumonia_{first.stem}"]["label"] == "pneumonia"
    with (out / "duplicates.csv").open() as handle:
        dropped = {row["dropped_file"]: row for row in csv.DictReader(handle)}
    assert dropped["train/NORMAL/IM-9999-0001.jpeg"]["kept_case"] == f"normal_{normal[0].stem}"
    assert dropped["train/PNEUMONIA/person9999_virus_1.jpeg"]["why"] == "conflicting labels"
    assert len(list((out / "imagesTs").iterdir())) == 2 and (out / "labelsTs.csv").is_file()
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["normal", "pneumonia"]
    assert run_cli("datasets", "check", out).returncode == 0

    three = get_recipe("KermanyPneumonia3").convert(src, tmp_path / "Dataset008_KermanyPneumonia3")
    with (three.output / "labelsTr.csv").open() as handle:
        labels = {row["case"]: row["label"] for row in csv.DictReader(handle)}
    assert labels[f"pneumonia_{chosen[0].stem}"] == "bacterial" and labels[f"pneumonia_{chosen[3].stem}"] == "viral"
    assert set(labels.values()) == {"normal", "bacterial", "viral"}


def test_kermany_pneumonia_full_training_split_drops_its_26_duplicates(shared_data, tmp_path):
    out = tmp_path / "Dataset007_KermanyPneumonia"
    summary = get_recipe("KermanyPneumonia").convert(shared_data / "xray-pneumonia-kermany-train", out)
    assert len(summary.skipped) == 26 and summary.num_training == 5216 - 26
    with (out / "labelsTr.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    patients = {}
    for row in rows:
        patients.setdefault(row["group"], set()).add(row["label"])
    assert all(len(labels) == 1 for labels in patients.values())  # a patient's images share one class
    report = check_dataset(out)
    assert report.ok(), [str(p) for p in report.errors[:3]]
