"""The second reliability pass (issue 23): defects an outside probe found, each reproduced with a
file made here or a real file from ../shared/data, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.io import MedicalImage, read_image, write_image
from medseg.inference.manifest import read_manifest
from tests.conftest import BRIGHT_DATASET, copy_bright_images, run_cli


def _error_lines(result) -> list[str]:
    return [line for line in result.stderr.strip().splitlines() if line.strip()]


def _bright_image(root: Path) -> Path:
    return root / "raw" / BRIGHT_DATASET / "imagesTr" / "case_000_0000.nii.gz"


# ------------------------------------------------------------------------------------ thin volumes
@pytest.mark.parametrize("slices", [1, 2, 3])
def test_thin_volumes_predict(bright_model, tmp_path, slices):
    """Fewer slices than one voxel of the plan's spacing (the model plans 5 mm; these are 1 mm apart):
    the resampled extent rounded to 0 and the case crashed. It must predict in the input's geometry."""
    root, model = bright_model
    image = read_image(_bright_image(root))
    thin = MedicalImage(image.array[:, 4:4 + slices].copy(), (1.0, *image.spacing[1:]), image.origin, image.direction)
    path = write_image(thin, tmp_path / "in" / "thin.nii.gz")
    result = run_cli("predict", "-i", path, "-o", tmp_path / "out", "-m", model, "--no-tta", root=root)
    assert result.returncode == 0, result.stderr
    label = read_image(tmp_path / "out" / "thin.nii.gz")
    assert label.spatial_shape == thin.spatial_shape and not label.geometry_differences(thin)


def test_real_three_slice_ct_predicts(bright_model, shared_data, tmp_path):
    root, model = bright_model
    series = shared_data / "dicom-seg-dcmqi" / "segmentations" / "ct-3slice"
    result = run_cli("predict", "-i", series, "-o", tmp_path / "out", "-m", model, "--no-tta", "--format", "nifti", root=root)
    assert result.returncode == 0, result.stderr
    assert read_image(tmp_path / "out" / "ct-3slice.nii.gz").spatial_shape == read_image(series).spatial_shape


# ------------------------------------------------------------------------ DICOM outputs, real headers
def _edited_series(shared_data: Path, target: Path, edit) -> Path:
    """A copy of a real Siemens MR series with ``edit(dataset)`` applied to every instance."""
    from pydicom import dcmread

    from tests.e2e.test_hospital_inference import series

    target.mkdir(parents=True)
    for path in sorted(series(shared_data, "siemens").iterdir()):
        dataset = dcmread(path)
        edit(dataset)
        dataset.save_as(target / path.name)
    return target


def test_patient_sex_0000_is_left_empty_with_a_note(bright_model, shared_data, tmp_path):
    """Seen in 4 of 10 real MR series: PatientSex '0000' made highdicom refuse the SEG and the
    RTSTRUCT fail dciodvfy. The value is not one of M/F/O: left empty, and the manifest says so."""
    from pydicom import dcmread

    from tests.e2e.test_hospital_inference import dciodvfy_errors

    root, model = bright_model
    source = _edited_series(shared_data, tmp_path / "in" / "mr", lambda d: setattr(d, "PatientSex", "0000"))
    out = tmp_path / "out"
    result = run_cli("predict", "-i", source, "-o", out, "-m", model, "--no-tta", "--format", "nifti,dicom-seg,rtstruct", root=root)
    assert result.returncode == 0, result.stderr
    [entry] = read_manifest(out / "manifest.jsonl")
    assert set(entry["outputs"]) == {"nifti", "dicom-seg", "rtstruct"}, entry
    assert any("PatientSex '0000'" in note and "left empty" in note for note in entry["notes"]), entry["notes"]
    for fmt in ("dicom-seg", "rtstruct"):
        assert dciodvfy_errors(Path(entry["outputs"][fmt])) == []
        assert dcmread(entry["outputs"][fmt]).PatientSex == ""


def test_a_case_whose_dicom_output_fails_leaves_nothing_that_looks_finished(bright_model, shared_data, tmp_path):
    """Instances sharing one SOP Instance UID can be read as a volume but cannot be referenced by a
    SEG: the case fails, and its NIfTI (written first) is kept under failed/, not beside the
    finished outputs. A later run that succeeds for the case supersedes the leftovers."""
    root, model = bright_model

    def same_uid(dataset):
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"

    source = _edited_series(shared_data, tmp_path / "in" / "mr", same_uid)
    out = tmp_path / "out"
    result = run_cli("predict", "-i", source, "-o", out, "-m", model, "--no-tta", "--format", "nifti,dicom-seg", root=root)
    assert result.returncode == 1 and "share SOP Instance UIDs" in result.stderr and "unexpected" not in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["failed", "manifest.jsonl"]
    assert sorted(p.name for p in (out / "failed").iterdir()) == ["mr.nii.gz"]
    [entry] = read_manifest(out / "manifest.jsonl")
    assert entry["status"] == "failed" and entry["outputs"] == {"nifti": str(out / "failed" / "mr.nii.gz")}, entry

    run_cli("predict", "-i", source, "-o", out, "-m", model, "--no-tta", "--format", "nifti", root=root, check=True)
    assert sorted(p.name for p in out.rglob("*")) == ["failed", "manifest.jsonl", "mr.nii.gz"]  # failed/ emptied


# ---------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs mount rights: root in CI's container; skipped with the reason elsewhere)."""
    import subprocess

    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_full_output_disk_is_a_clear_error_and_resume_finishes(bright_model, tmp_path, small_disk):
    root, model = bright_model
    inputs = copy_bright_images(root, tmp_path / "in")
    out = small_disk / "out"
    out.mkdir()
    filler = _fill(small_disk)
    result = run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--format", "nifti,overlay", root=root)
    lines = _error_lines(result)
    assert result.returncode == 1 and "unexpected" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "No space left on device" in result.stderr and "manifest.jsonl" in lines[-1], result.stderr
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries or staging folders left
    filler.unlink()
    resumed = run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--format", "nifti,overlay", "--resume", root=root)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [f"case_00{i}{suffix}" for i in range(3) for suffix in (".nii.gz", ".overlay.png")] + ["manifest.jsonl"]
    )
    assert [entry["status"] for entry in read_manifest(out / "manifest.jsonl")][-3:] == ["done"] * 3


# --------------------------------------------------------------------------- silent wrong results
def test_intensities_near_1e33_are_segmented_as_the_image_they_scale(bright_model, tmp_path):
    """The z-score's statistics overflowed float32 and the image was segmented as a constant. A
    z-score does not depend on the scale: the scaled image gets the original's segmentation."""
    root, model = bright_model
    image = read_image(_bright_image(root))
    scaled = write_image(image.with_array((image.array * np.float32(1e31)).astype(np.float32)), tmp_path / "in" / "scaled.nii.gz")
    original = write_image(image, tmp_path / "in" / "original.nii.gz")
    assert float(np.abs(read_image(scaled).array).max()) > 1e33
    run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "--no-tta", root=root, check=True)
    labels = {name: read_image(tmp_path / "out" / f"{name}.nii.gz").array for name in ("scaled", "original")}
    assert labels["original"].any() and np.array_equal(labels["scaled"], labels["original"])
    assert original.is_file()


def test_a_label_map_segmentation_object_is_not_segmented_as_an_image(bright_model, shared_data, tmp_path):
    """A DICOM SEG of the label map type (2024's storage class) beside its source series: the series
    is the one case; the SEG is listed as a non-image object, not segmented."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    root, model = bright_model
    source = tmp_path / "in" / "study" / "ct"
    shutil.copytree(shared_data / "dicom-seg-dcmqi" / "segmentations" / "ct-3slice", source)  # real CT slices, complete headers
    datasets = [__import__("pydicom").dcmread(p) for p in sorted(source.iterdir())]
    for dataset in datasets:  # blank in these files, which highdicom refuses to copy
        dataset.SpecificCharacterSet = "ISO_IR 100"
    mask = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), np.uint8)
    mask[:, 100:140, 100:140] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="box", segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP, segment_descriptions=[description],
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"
    (tmp_path / "in" / "study" / "seg").mkdir()
    seg.save_as(tmp_path / "in" / "study" / "seg" / "labelmap.dcm")
    result = run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "--no-tta", root=root)
    assert result.returncode == 0, result.stderr
    cases = [entry["case"] for entry in read_manifest(tmp_path / "out" / "manifest.jsonl")]
    assert cases == ["study_ct"], cases
    assert "Label Map Segmentation" in result.stdout + result.stderr


def test_evaluate_refuses_a_two_channel_prediction_and_names_unreferenced_ones(bright_model, tmp_path):
    root, _ = bright_model
    raw = root / "raw" / BRIGHT_DATASET
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for case in ("case_000", "case_001"):
        shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", predictions / f"{case}.nii.gz")
    shutil.copy(raw / "labelsTr" / "case_002.nii.gz", predictions / "case_099.nii.gz")  # no reference of that name
    references = tmp_path / "ref"
    references.mkdir()
    for case in ("case_000", "case_001"):
        shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", references / f"{case}.nii.gz")
    result = run_cli("evaluate", predictions, references, "-j", raw / "dataset.json", root=root)
    assert result.returncode == 0, result.stderr
    assert "not scored" in result.stderr and "case_099.nii.gz" in result.stderr
    assert json.loads((predictions / "summary.json").read_text())["unreferenced_predictions"] == ["case_099.nii.gz"]

    label = read_image(raw / "labelsTr" / "case_001.nii.gz")
    two = label.with_array(np.concatenate([label.array, label.array]))
    write_image(two, predictions / "case_001.nii.gz")
    result = run_cli("evaluate", predictions, references, "-j", raw / "dataset.json", root=root)
    lines = _error_lines(result)
    assert result.returncode == 1 and "case_001.nii.gz" in lines[-1] and "2 channels" in lines[-1], result.stderr


# ------------------------------------------------------------------------------------ batch rules
def test_resume_keeps_one_manifest_line_per_case_with_its_attempt(bright_model, tmp_path):
    root, model = bright_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(_bright_image(root), inputs / "good_0000.nii.gz")
    (inputs / "later_0000.nii.gz").write_bytes(b"not yet copied")
    out = tmp_path / "out"
    first = run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", root=root)
    assert first.returncode == 1
    shutil.copy(_bright_image(root), inputs / "later_0000.nii.gz")  # the transfer finished
    for _ in range(2):  # resumed twice: the second finds everything done
        run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", "--resume", root=root, check=True)
    entries = read_manifest(out / "manifest.jsonl")
    assert [(e["case"], e["status"], e["attempt"]) for e in entries] == [("good", "done", 1), ("later", "done", 2)], entries


def test_dicom_formats_for_a_nifti_input_fail_the_case_instead_of_writing_nothing(bright_model, tmp_path):
    root, model = bright_model
    out = tmp_path / "out"
    result = run_cli("predict", "-i", _bright_image(root), "-o", out, "-m", model, "--no-tta", "--format", "dicom-seg,rtstruct", root=root)
    assert result.returncode == 1 and "none of the formats asked for applies" in result.stderr and "not a DICOM series" in result.stderr, result.stderr
    [entry] = read_manifest(out / "manifest.jsonl")
    assert entry["status"] == "failed" and entry["outputs"] == {}


def test_zip_bombs_are_refused_before_unpacking_and_messages_hide_the_unpack_folder(bright_model, tmp_path):
    import zipfile

    root, model = bright_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    with zipfile.ZipFile(inputs / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as archive, archive.open("scan_0000.nii", "w") as member:
        for _ in range(300):  # 300 MB of zeros in a ~300 KB archive
            member.write(bytes(1 << 20))
    assert (inputs / "bomb.zip").stat().st_size < 2 * 1024**2
    with zipfile.ZipFile(inputs / "study.zip", "w") as archive:
        archive.write(_bright_image(root), "scans/good_0000.nii.gz")
        archive.writestr("scans/broken_0000.nii.gz", b"\x1f\x8b\x08\x00 not gzip")
    out = tmp_path / "out"
    result = run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", root=root)
    assert result.returncode == 1 and "unexpected" not in result.stderr, result.stderr
    failed = {entry["case"]: entry["error"] for entry in read_manifest(out / "manifest.jsonl") if entry["status"] == "failed"}
    assert set(failed) == {"bomb", "study__scans_broken"}, failed  # volumes below the top level are cases too
    assert "bomb.zip" in failed["bomb"] and "zip bomb" in failed["bomb"]
    assert "zip:" in failed["study__scans_broken"] and "broken_0000.nii.gz" in failed["study__scans_broken"]
    assert ".medseg-unpack" not in result.stderr + (out / "manifest.jsonl").read_text()
    assert (out / "study__scans_good.nii.gz").is_file() and not list(out.glob(".medseg-*"))


# --------------------------------------------------------------------------------------- usability
def test_dicom_list_shows_whole_uids_on_a_narrow_terminal(shared_data):
    import os
    import subprocess
    import sys

    from tests.e2e.test_hospital_inference import series

    folder = series(shared_data, "siemens")
    uid = str(__import__("pydicom").dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)
    result = subprocess.run([sys.executable, "-m", "medseg.cli", "dicom", "list", str(folder)], capture_output=True, text=True,
                            env=dict(os.environ, COLUMNS="80"), timeout=120)
    assert result.returncode == 0 and uid in result.stdout, result.stdout


def test_a_palette_png_is_read_as_the_colours_it_shows(tmp_path):
    from PIL import Image

    from medseg.data.cases import stack_channel_files

    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[:, :10] = (200, 30, 40)
    rgb[:, 10:] = (10, 220, 90)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "colour.png")
    Image.fromarray(rgb[..., 0]).convert("P").save(tmp_path / "grey.png")
    assert read_image(tmp_path / "colour.png").num_channels == 1  # read as such: indices (a label map's reading)
    colour, grey = stack_channel_files([tmp_path / "colour.png"]), stack_channel_files([tmp_path / "grey.png"])
    assert colour.num_channels == 3 and np.array_equal(np.moveaxis(colour.array, 0, -1), rgb.astype(np.float32))
    assert grey.num_channels == 1 and np.array_equal(grey.array[0], rgb[..., 0].astype(np.float32))


def test_nnunet_checkpoint_refusal_gives_no_advice_to_unpickle(tmp_path):
    import torch

    from medseg.errors import MedsegError
    from medseg.nnunet_model_folder import load_nnunet_checkpoint

    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "trainer": Path("/somewhere")}, path)  # a pickled object beyond plain values
    with pytest.raises(MedsegError) as refused:
        load_nnunet_checkpoint(path)
    message = str(refused.value)
    assert "checkpoint_final.pth" in message and "without running code" in message and "weights_only=False" not in message


def test_debug_prints_the_traceback_of_a_per_case_bug(monkeypatch, capsys):
    from medseg.inference.batch import DEBUG_VARIABLE, unexpected

    for debug in (False, True):
        if debug:
            monkeypatch.setenv(DEBUG_VARIABLE, "1")
        try:
            {}["missing"]
        except KeyError as error:
            line = unexpected("case_7", error)
        assert line.startswith("case_7: unexpected KeyError") and "\n" not in line
        assert ("Traceback" in capsys.readouterr().err) == debug
