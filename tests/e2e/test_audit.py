"""Results a radiologist can audit: inputs checked against the model's training images (on real
CT, MR, DICOM and endoscopy files) and per-structure measurements, through `medseg predict`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.audit.input_checks import check_input
from medseg.audit.input_profile import profile_from_fingerprint
from medseg.audit.measurements import measure_structures
from medseg.data.builder import RawDatasetBuilder
from medseg.data.layout import load_dataset_description
from medseg.inference.batch import read_case
from medseg.inference.inputs import discover
from medseg.io import MedicalImage, read_image
from medseg.tasks.segmentation.planning.fingerprint import extract_fingerprint
from tests.conftest import copy_bright_images, run_cli


def _series(folder: Path) -> MedicalImage:
    cases = discover(folder, None).cases
    assert len(cases) == 1, f"{folder}: expected one series"
    return read_case(cases[0])


def _profile(raw: Path, images: dict[str, MedicalImage], channels: dict[str, str], threshold: float, normalization: list[str]) -> dict:
    """The input profile of a raw dataset of real images (labels: a threshold of each), made as a
    trained model folder makes it: fingerprint, then profile."""
    with RawDatasetBuilder(raw, ".nii.gz" if images[next(iter(images))].ndim == 3 else ".png") as builder:
        for case, image in images.items():
            for channel in range(image.num_channels):
                builder.add_image(case, image.with_array(image.array[channel:channel + 1]), channel=channel)
            label = (image.array.mean(axis=0, keepdims=True) > threshold).astype(np.uint8)
            builder.add_label(case, image.with_array(label))
        builder.finish({"channel_names": channels, "labels": {"background": 0, "structure": 1}, "numTraining": len(images),
                        "file_ending": ".nii.gz" if image.ndim == 3 else ".png"})
    return profile_from_fingerprint(extract_fingerprint(load_dataset_description(raw), workers=1), normalization)


@pytest.fixture(scope="module")
def ct(shared_data, tmp_path_factory) -> dict:
    """A CT model's profile: the shared CT DICOM series and the two CT NIfTIs."""
    folder = shared_data / "ct-mr-totalsegmentator"
    series = _series(folder / "example_ct_dicom")
    images = {"ct_dicom": series, "ct_full": read_image(folder / "example_ct.nii.gz"), "ct_small": read_image(folder / "example_ct_sm.nii.gz")}
    images = {name: image.with_array(image.array.astype(np.int16)) for name, image in images.items()}
    raw = tmp_path_factory.mktemp("ct") / "Dataset950_CT"
    return {"profile": _profile(raw, images, {"0": "CT"}, -500, ["ct"]), "series": series, "dicom": folder / "example_ct_dicom"}


def _checks(findings) -> set[str]:
    return {finding.check for finding in findings}


def test_a_ct_of_the_training_kind_passes(ct):
    assert check_input(ct["profile"], ct["series"]) == []


def test_an_mr_fed_to_a_ct_model_is_named(ct, shared_data):
    mr = read_image(shared_data / "ct-mr-totalsegmentator" / "example_mr_sm.nii.gz")
    findings = check_input(ct["profile"], mr)
    intensity = [f for f in findings if f.check == "intensity"]
    assert intensity and "darkest voxels" in intensity[0].message and "-4" in intensity[0].message, findings

    mr_series = _series(shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001")
    findings = check_input(ct["profile"], mr_series)
    modality = [f for f in findings if f.check == "modality"]
    assert modality and modality[0].message.startswith("the DICOM series is MR; the model's input (CT) is CT"), findings


def test_a_ct_without_its_rescale_is_named(ct, tmp_path):
    import pydicom

    for path in sorted(ct["dicom"].iterdir()):
        dataset = pydicom.dcmread(path)
        dataset.RescaleIntercept = 0  # the stored values as they are: air near 0 instead of -1024
        dataset.save_as(tmp_path / path.name)
    findings = check_input(ct["profile"], _series(tmp_path))
    assert [f.values["statistic"] for f in findings if f.check == "intensity"][:1] == ["p00_5"], findings
    assert "without its rescale applied" in findings[0].message


def test_a_series_missing_half_its_slices_is_named(ct, tmp_path):
    files = sorted(ct["dicom"].iterdir())
    for path in files[: len(files) // 2]:
        shutil.copy(path, tmp_path / path.name)
    findings = check_input(ct["profile"], _series(tmp_path))
    assert _checks(findings) == {"slices"}, findings
    assert findings[0].message == f"{len(files) // 2} slices; the training images had {len(files)} to 112"


def test_a_png_at_a_tenth_of_the_training_size_is_named(shared_data, tmp_path):
    from PIL import Image

    folder = shared_data / "endoscopy-kvasir-seg"
    jpegs = sorted((folder).rglob("images/*.jpg"))[:3]
    images = {f"polyp_{index}": read_image(path) for index, path in enumerate(jpegs)}
    profile = _profile(tmp_path / "Dataset951_Polyps", images, {"0": "R", "1": "G", "2": "B"}, 128, ["zscore"] * 3)
    assert check_input(profile, read_image(jpegs[0])) == []
    small = tmp_path / "small.png"
    with Image.open(jpegs[0]) as original:
        original.resize((original.width // 10, original.height // 10)).save(small)
    findings = check_input(profile, read_image(small))
    assert _checks(findings) == {"field_of_view"} and len(findings) == 2, findings
    assert "field of view 25 mm along axis 0 (25 voxels) is far outside the training range 256-256 mm" in findings[0].message


def test_measurements_of_a_known_label_map():
    direction = np.diag([1.0, -1.0, 1.0])
    image = MedicalImage(np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6), (2.0, 1.0, 0.5), (10.0, 20.0, 30.0), direction)
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # one block of 8 voxels
    labels[3, 4, 5] = 1  # a second component (not touching)
    labels[2, 2, 2] = 2
    measured = measure_structures(labels, image, {"background": 0, "liver": 1, "spleen": 2, "kidney": 3})
    liver, spleen, kidney = measured["structures"]
    assert (liver["voxels"], liver["components"], liver["volume_ml"]) == (9, 2, 9 * 1.0 / 1000)
    # voxel centres: axis 0 -> world x from 10 (+2 mm), axis 1 -> world y from 20 (-1 mm), axis 2 -> z from 30 (+0.5 mm)
    assert liver["bbox_min_mm"] == [10.0, 16.0, 30.0] and liver["bbox_max_mm"] == [16.0, 20.0, 32.5]
    inside = image.array[0][labels == 1]
    assert liver["intensity"]["0"]["mean"] == pytest.approx(inside.mean(), abs=1e-3)
    assert spleen["voxels"] == 1 and spleen["intensity"]["0"]["p50"] == image.array[0, 2, 2, 2]
    assert kidney == {"label": "kidney", "value": 3, "voxels": 0, "volume_ml": 0.0, "components": 0, "bbox_min_mm": None, "bbox_max_mm": None, "intensity": {}}

    flat = MedicalImage(np.ones((1, 10, 10), np.float32), (0.5, 0.25), (0.0, 0.0), np.eye(2))
    area = measure_structures(np.pad(np.ones((4, 4), np.uint8), 3), flat, {"polyp": 1})["structures"][0]
    assert area["area_mm2"] == pytest.approx(16 * 0.125) and "volume_ml" not in area


def test_predict_checks_inputs_and_measures(bright_model, shared_data, tmp_path):
    root, model = bright_model
    profile = json.loads((model / "input_profile.json").read_text())
    assert profile["channels"][0]["name"] == "MR" and "intensity" in profile["channels"][0] and profile["cases"] == 4

    inputs = copy_bright_images(root, tmp_path / "inputs", count=2)
    shutil.copy(shared_data / "ct-mr-totalsegmentator" / "example_mr_sm.nii.gz", inputs / "scan_0000.nii.gz")
    result = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(model), "--format", "label,measurements", "--no-tta", root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    entries = {e["case"]: e for e in map(json.loads, (tmp_path / "out" / "manifest.jsonl").read_text().splitlines())}
    assert entries["case_000"]["review"] == {"flag": False, "reasons": []} and entries["case_000"]["input_checks"] == []
    scan = entries["scan"]
    # the bright training volumes are stored with right-left along axis 0 and brighter: the real MR differs in that too
    assert scan["review"]["flag"] and {c["check"] for c in scan["input_checks"]} == {"field_of_view", "orientation", "intensity"}, scan["input_checks"]
    assert scan["review"]["reasons"][0].startswith("input field_of_view: field of view 273 mm along axis 1 (91 voxels)")
    assert "review scan: input field_of_view" in " ".join(result.stdout.split())

    measured = json.loads(Path(scan["outputs"]["measurements"]).read_text())
    label = read_image(Path(scan["outputs"]["label"]))
    liver = measured["structures"][0]
    assert liver["label"] == "liver" and liver["voxels"] == int((label.array == 1).sum())
    with open(tmp_path / "out" / "measurements.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["case"] for row in rows) == ["case_000", "case_001", "scan"]
    assert {row["volume_ml"] for row in rows if row["case"] == "scan"} == {str(liver["volume_ml"])}

    refused = run_cli("predict", "-i", str(inputs), "-o", str(tmp_path / "refused"), "-m", str(model), "--qc", "refuse", "--no-tta", root=root)
    assert refused.returncode == 1
    assert "scan: refused by the input checks (--qc refuse): field of view 273 mm" in " ".join(refused.stderr.split())
    assert (tmp_path / "refused" / "case_000.nii.gz").is_file() and not (tmp_path / "refused" / "scan.nii.gz").exists()

    off = run_cli("predict", "-i", str(inputs / "scan_0000.nii.gz"), "-o", str(tmp_path / "off"), "-m", str(model), "--qc", "off", "--no-tta", root=root)
    entry = json.loads((tmp_path / "off" / "manifest.jsonl").read_text())
    assert off.returncode == 0 and entry["input_checks"] is None and not entry["review"]["flag"]


def test_dicom_sr_reports_the_measurements_and_the_review(bright_model, shared_data, tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from tests.e2e.test_hospital_inference import dciodvfy_errors

    root, model = bright_model
    out = tmp_path / "out"
    result = run_cli("predict", "-i", str(shared_data / "ct-mr-totalsegmentator" / "example_ct_dicom"), "-o", str(out), "-m", str(model),
                     "--format", "dicom-sr,measurements", "--no-tta", root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    [entry] = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert set(entry["outputs"]) == {"dicom-seg", "dicom-sr", "measurements"}  # the report brings its SEG
    sr_path = Path(entry["outputs"]["dicom-sr"])
    assert dciodvfy_errors(sr_path) == []

    report = hd.sr.srread(sr_path)
    measured = json.loads(Path(entry["outputs"]["measurements"]).read_text())
    present = [s for s in measured["structures"] if s["voxels"]]
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(present) >= 1
    for group, structure in zip(groups, present):
        assert group.get_measurements(name=codes.SCT.Volume)[0].value == pytest.approx(structure["volume_ml"])
        mean = group.get_measurements(name=codes.DCM.AttenuationCoefficient)[0]
        assert mean.value == pytest.approx(structure["intensity"]["0"]["mean"]) and mean.unit == codes.UCUM.HounsfieldUnit
        assert group.referenced_segment is not None
    [case_group] = report.content.get_image_measurement_groups()
    [review] = case_group.get_qualitative_evaluations()
    assert entry["review"]["flag"] and review.value == codes.SCT.Yes
    comments = [item.TextValue for item in case_group[0].ContentSequence if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Comment.value]
    assert comments == [f"input {c['check']}: {c['message']}" for c in entry["input_checks"]]
    assert any("the DICOM series is CT; the model's input (MR) is MR" in text for text in comments)


def test_calibrate_gives_a_folder_trained_before_profiles_its_profile(bright_model, tmp_path):
    root, model = bright_model
    older = tmp_path / "older_model"
    shutil.copytree(model, older)
    (older / "input_profile.json").unlink()
    result = run_cli("predict", "-i", str(copy_bright_images(root, tmp_path / "in", 1)), "-o", str(tmp_path / "out"), "-m", str(older), "--no-tta", root=root)
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert result.returncode == 0 and entry["input_checks"] is None and any(n.startswith("inputs not checked") for n in entry["notes"])

    calibrated = run_cli("calibrate", str(older), root=root)
    assert calibrated.returncode == 0, calibrated.stdout + calibrated.stderr
    assert "fingerprint.json" in calibrated.stdout
    assert json.loads((older / "input_profile.json").read_text()) == json.loads((model / "input_profile.json").read_text())


def test_cross_validation_calibrates_the_expected_dice_and_calibrate_refits_it(tmp_path):
    """plan-and-train fits calibration.json on the out-of-fold predictions; predict reports each
    structure's expected Dice; `medseg calibrate` rebuilds it for a folder whose validations predate it."""
    from tests.conftest import BRIGHT_DATASET, build_bright_dataset

    root = tmp_path / "root"
    build_bright_dataset(root / "raw" / BRIGHT_DATASET, cases=10)
    run_cli("plan-and-train", "--dataset", BRIGHT_DATASET, "--epochs", "2", "--iterations-per-epoch", "5", "--workers", "1", root=root, check=True)
    model = root / "results" / BRIGHT_DATASET / "unet__medsegPlans__3d_fullres"
    calibration = json.loads((model / "calibration.json").read_text())
    liver = calibration["labels"]["liver"]
    assert calibration["poor_dice"] == 0.85 and liver["fitted"] and liver["cases"] == 10
    assert set(calibration["quality"]["liver"]) == {"auroc", "baseline_auroc", "mean_absolute_error"}
    confidence = json.loads((model / "fold_0" / "validation" / "confidence.json").read_text())
    assert len(confidence) == 2 and all(0 <= c["liver"]["soft_dice"] <= 1 for c in confidence.values())
    described = run_cli("describe", str(model), root=root, check=True).stdout
    assert "calibration: expected Dice from the max_softmax" in described and "liver: threshold" in described

    predicted = run_cli("predict", "-i", str(copy_bright_images(root, tmp_path / "in", 1)), "-o", str(tmp_path / "out"), "-m", str(model), "--no-tta", root=root)
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert predicted.returncode == 0 and set(entry["expected_dice"]) == {"liver"}
    expected = entry["expected_dice"]["liver"]
    assert 0 <= expected["expected_dice"] <= 1 and expected["threshold"] == liver["threshold"]
    assert expected["review"] == (expected["expected_dice"] <= liver["threshold"]) == any(r.startswith("liver: expected Dice") for r in entry["review"]["reasons"])

    (model / "calibration.json").unlink()
    for path in model.glob("fold_*/validation/confidence.json"):
        path.unlink()
    refitted = run_cli("calibrate", str(model), root=root)
    assert refitted.returncode == 0, refitted.stdout + refitted.stderr
    assert refitted.stdout.count("predicting its 2 held-out cases again") == 5
    assert json.loads((model / "calibration.json").read_text()) == calibration
