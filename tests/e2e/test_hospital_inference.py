"""Hospital inference: mixed inputs (DICOM trees, NIfTI, zips, corrupt files), DICOM SEG and RTSTRUCT
validated by dicom3tools' dciodvfy and read back, the manifest, and kill -9 then --resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medseg.inference.manifest import read_manifest
from medseg.io import MedicalImage, read_image
from tests.conftest import copy_bright_images, require_peer, run_cli

LABELS = {"background": 0, "liver": 1, "tumour": 2}
from tests.conftest import BRIGHT_DATASET as DATASET


def dciodvfy_errors(path: Path) -> list[str]:
    if shutil.which("dciodvfy") is None:
        if os.environ.get("CI"):
            pytest.fail("dciodvfy (Debian package dicom3tools) must be installed in CI")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def series(shared_data: Path, name: str) -> Path:
    return {
        "ct_empty_uids": shared_data / "ct-mr-totalsegmentator" / "example_ct_dicom",
        "siemens": shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001",
        "ge": shared_data / "dicom-series-dicom2nifti" / "ge" / "anatomical" / "001",
        "philips_enhanced": shared_data / "dicom-series-dicom2nifti" / "philips_enhanced" / "anatomical" / "001",
        "gantry_tilt": shared_data / "dicom-series-dicom2nifti" / "failing" / "gantrytilting" / "001",
    }[name]


def threshold_labels(image: MedicalImage) -> np.ndarray:
    """Two nested labels from smoothed intensities (few, organ-like regions rather than noise specks)."""
    from scipy import ndimage

    values = ndimage.gaussian_filter(image.array[0].astype(np.float32), (0, 2, 2) if image.ndim == 3 else 2)
    label = np.zeros(values.shape, np.uint8)
    label[values > np.percentile(values, 70)] = 1
    label[values > np.percentile(values, 95)] = 2
    return label


# ------------------------------------------------------------------------------------------- codes
def test_segment_codes_defaults_and_the_model_table(tmp_path):
    from medseg.errors import MedsegError
    from medseg.io.dicom.codes import ANATOMICAL_STRUCTURE, ABNORMAL_STRUCTURE, TISSUE, segment_codes

    codes = segment_codes({"background": 0, "liver": 1, "left_kidney": 2, "tumour": 3, "gizmo": 4})
    assert "background" not in codes
    assert codes["liver"].category == ANATOMICAL_STRUCTURE and codes["liver"].type == ("SCT", "10200004", "Liver")
    assert codes["left_kidney"].type[2] == "Kidney"
    assert codes["tumour"].category == ABNORMAL_STRUCTURE
    assert codes["gizmo"].category == TISSUE and codes["gizmo"].label == "gizmo"
    (tmp_path / "segment_codes.json").write_text(json.dumps({"gizmo": {"category": ["SCT", "91723000", "Anatomical Structure"], "type": ["SCT", "12738006", "Brain"]}}))
    assert segment_codes({"gizmo": 1}, tmp_path)["gizmo"].type == ("SCT", "12738006", "Brain")
    (tmp_path / "segment_codes.json").write_text(json.dumps({"gizmo": {"category": ["SCT", "1"], "type": ["SCT", "2", "x"]}}))
    with pytest.raises(MedsegError, match="gizmo.category must be"):
        segment_codes({"gizmo": 1}, tmp_path)
    (tmp_path / "segment_codes.json").write_text(json.dumps({"spleen": {}}))
    with pytest.raises(MedsegError, match="labels the model does not have: spleen"):
        segment_codes({"gizmo": 1}, tmp_path)


# ------------------------------------------------------------------------------------------ inputs
def test_discover_a_mixed_folder(shared_data, tmp_path):
    from medseg.inference.inputs import discover

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copytree(series(shared_data, "ct_empty_uids"), folder / "ct")
    shutil.copytree(series(shared_data, "siemens"), folder / "patients" / "mr")
    shutil.copy(shared_data / "ct-mr-totalsegmentator" / "example_ct_sm.nii.gz", folder / "small_0000.nii.gz")
    with zipfile.ZipFile(folder / "study.zip", "w") as archive:
        for path in series(shared_data, "ge").iterdir():
            archive.write(path, f"exam/{path.name}")
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "notes.bin").write_bytes(b"\x00" * 300)
    found = discover(folder, unpack_to=tmp_path / "unpack")
    by_id = {case.case_id: case for case in found.cases}
    assert set(by_id) == {"ct", "patients_mr", "small", "study__exam", "broken", "notes.bin"}
    assert by_id["ct"].series is not None and len(by_id["ct"].files) == 20 and by_id["ct"].problem is None
    assert by_id["study__exam"].series is not None and by_id["study__exam"].problem is None
    assert "not a readable zip" in by_id["broken"].problem and "broken.zip" in by_id["broken"].problem
    assert "neither an image" in by_id["notes.bin"].problem
    assert [case.case_id for case in discover(folder, unpack_to=tmp_path / "unpack").cases] == sorted(by_id)  # stable ids
    picked = discover(folder, "modality:CT", unpack_to=tmp_path / "unpack2").cases
    assert {c.case_id for c in picked if c.series is not None} == {"ct"}


def test_series_rules_pick_within_each_study(shared_data, tmp_path):
    """One study with a 4-slice series and a 2-slice copy (another series), plus another study."""
    import pydicom

    from medseg.errors import MedsegError
    from medseg.inference.inputs import discover, parse_series_rule

    study = tmp_path / "in" / "study"
    shutil.copytree(series(shared_data, "ge"), study / "full")
    (study / "localiser").mkdir()
    for index, path in enumerate(sorted((study / "full").iterdir())[:2]):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID, dataset.SeriesNumber, dataset.SeriesDescription = "1.2.3.4.5.6", 99, "LOCALISER"
        dataset.SOPInstanceUID = f"1.2.3.4.5.6.{index}"
        dataset.save_as(study / "localiser" / path.name)
    shutil.copytree(series(shared_data, "siemens"), tmp_path / "in" / "other_study")
    everything = discover(tmp_path / "in").cases
    assert sorted(case.case_id for case in everything) == ["other_study", "study_full", "study_localiser"]
    assert sorted(case.case_id for case in discover(tmp_path / "in", "largest").cases) == ["other_study", "study_full"]
    assert [case.case_id for case in discover(tmp_path / "in", "description:^loc").cases] == ["study_localiser"]
    assert [case.case_id for case in discover(tmp_path / "in", "number:99").cases] == ["study_localiser"]
    assert [case.case_id for case in discover(tmp_path / "in", "modality:MR,largest").cases] == ["other_study", "study_full"]
    with pytest.raises(MedsegError, match="not a regular expression"):
        parse_series_rule("description:([")
    with pytest.raises(MedsegError, match="expected largest"):
        parse_series_rule("colour:red")


# ------------------------------------------------------------------------------- SEG and RTSTRUCT
def write_derived(shared_data: Path, name: str, writer_name: str, target: Path):
    """(image, label map, sources, written path) for a real series and a threshold label map."""
    from medseg.io.dicom import derived
    from medseg.io.dicom.codes import segment_codes
    from medseg.io.dicom.sources import load_sources

    image = read_image(series(shared_data, name), series="largest")
    label = threshold_labels(image)
    sources = load_sources(image.metadata, name)
    written = getattr(derived, writer_name)(label, LABELS, segment_codes(LABELS), sources, derived.Algorithm("medseg test", "0.0"), target)
    return image, label, sources, written


@pytest.mark.parametrize("name", ["ct_empty_uids", "siemens", "ge", "philips_enhanced"])
def test_dicom_seg_is_valid_and_maps_onto_the_source_slices(shared_data, tmp_path, name):
    import highdicom as hd

    image, label, sources, target = write_derived(shared_data, name, "write_dicom_seg", tmp_path / "out.seg.dcm")
    assert dciodvfy_errors(target) == []
    seg = hd.seg.segread(target)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "tumour"]
    if name == "ct_empty_uids":
        assert any("meta information" in note for note in sources.notes) and any("StudyInstanceUID" in note for note in sources.notes)
    uids = image.metadata["sop_instance_uids"]
    if sources.multiframe:  # one multi-frame source: frames referenced by number, in the object's order
        source_uid = str(sources.datasets[0].SOPInstanceUID)
        frames = [f + 1 for f in image.metadata["source_frames"]]
        pixels = seg.get_pixels_by_source_frame(source_uid, frames, combine_segments=True, skip_overlap_checks=True)
    else:
        completed = [str(d.SOPInstanceUID) for d in sources.datasets]
        assert uids == completed or name == "ct_empty_uids"
        pixels = seg.get_pixels_by_source_instance(completed, combine_segments=True, skip_overlap_checks=True)
    expected = np.where(label == 2, 2, np.where(label == 1, 1, 0))
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)


@pytest.mark.parametrize("name", ["ct_empty_uids", "ge"])
def test_rtstruct_is_valid_and_its_contours_give_back_the_labels(shared_data, tmp_path, name):
    import pydicom
    from rt_utils import RTStruct

    image, label, sources, target = write_derived(shared_data, name, "write_rtstruct", tmp_path / "out.rtstruct.dcm")
    assert dciodvfy_errors(target) == []
    content = pydicom.dcmread(target)
    assert [roi.ROIName for roi in content.StructureSetROISequence] == ["liver", "tumour"]
    referenced = {str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for roi in content.ROIContourSequence for c in roi.ContourSequence}
    assert referenced <= {str(d.SOPInstanceUID) for d in sources.datasets}
    # rasterise the contours again on the source slices (rt-utils' own reader, on the completed headers)
    reread = RTStruct(sources.datasets, content)
    for name_, value in (("liver", 1), ("tumour", 2)):
        mask = np.moveaxis(reread.get_roi_mask_by_name(name_), -1, 0)
        truth = label == value
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.9, f"{name_}: contours give back the label with Dice {dice:.3f}"


def test_rtstruct_of_a_multiframe_series_is_refused_clearly(shared_data, tmp_path):
    from medseg.io.dicom.codes import segment_codes
    from medseg.io.dicom.derived import Algorithm, UnsupportedSource, write_rtstruct
    from medseg.io.dicom.sources import load_sources

    image = read_image(series(shared_data, "philips_enhanced"), series="largest")
    with pytest.raises(UnsupportedSource, match="single-frame slices"):
        write_rtstruct(threshold_labels(image), LABELS, segment_codes(LABELS), load_sources(image.metadata, "x"), Algorithm("t", "0"), tmp_path / "x.dcm")
    assert not list(tmp_path.iterdir())


def test_no_foreground_writes_no_dicom_object(shared_data, tmp_path):
    from medseg.io.dicom.codes import segment_codes
    from medseg.io.dicom.derived import Algorithm, write_dicom_seg
    from medseg.io.dicom.sources import load_sources

    image = read_image(series(shared_data, "ge"))
    empty = np.zeros(image.spatial_shape, np.uint8)
    assert write_dicom_seg(empty, LABELS, segment_codes(LABELS), load_sources(image.metadata, "ge"), Algorithm("t", "0"), tmp_path / "x.dcm") is None
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------- the CLI, end to end
def _mixed_inputs(shared_data: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copytree(series(shared_data, "ct_empty_uids"), folder / "ct")
    shutil.copytree(series(shared_data, "siemens"), folder / "siemens")
    shutil.copytree(series(shared_data, "philips_enhanced"), folder / "philips")
    shutil.copytree(series(shared_data, "gantry_tilt"), folder / "tilted")
    shutil.copy(shared_data / "ct-mr-totalsegmentator" / "example_mr_sm.nii.gz", folder / "mr_0000.nii.gz")
    with zipfile.ZipFile(folder / "ge_study.zip", "w") as archive:
        for path in series(shared_data, "ge").iterdir():
            archive.write(path, f"series/{path.name}")
    (folder / "corrupt_0000.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    return folder


def test_predict_a_mixed_folder_to_seg_rtstruct_nifti_and_overlays(bright_model, shared_data, tmp_path):
    import highdicom as hd

    root, model = bright_model
    inputs = _mixed_inputs(shared_data, tmp_path / "in")
    output = tmp_path / "out"
    result = run_cli(
        "predict", "-i", inputs, "-o", output, "-m", model, "--format", "nifti,dicom-seg,rtstruct,overlay", "--workers", "2", "--no-tta", root=root,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # the corrupt file and the tilted series fail
    entries = {entry["case"]: entry for entry in map(json.loads, (output / "manifest.jsonl").read_text().splitlines())}
    assert set(entries) == {"ct", "siemens", "philips", "tilted", "mr", "ge_study__series", "corrupt"}
    assert entries["corrupt"]["status"] == "failed" and "corrupt_0000.nii.gz" in entries["corrupt"]["error"]
    assert entries["tilted"]["status"] == "failed" and "tilt" in entries["tilted"]["error"].lower()
    for case in ("ct", "siemens", "philips", "ge_study__series", "mr"):
        assert entries[case]["status"] == "done", entries[case]
        assert Path(entries[case]["outputs"]["nifti"]).is_file() and Path(entries[case]["outputs"]["overlay"]).is_file()
        assert entries[case]["model_name"].startswith("medseg unet") and entries[case]["timings"]["predict_s"] > 0
    assert set(entries["mr"]["skipped"]) == {"dicom-seg", "rtstruct"} and "not a DICOM series" in entries["mr"]["skipped"]["dicom-seg"]
    assert "rtstruct" in entries["philips"]["skipped"]
    assert any("StudyInstanceUID" in note for note in entries["ct"]["notes"])
    written_segs = 0
    for case in ("ct", "siemens", "philips", "ge_study__series"):
        if "dicom-seg" not in entries[case]["outputs"]:
            assert "no label" in entries[case]["skipped"]["dicom-seg"]
            continue
        written_segs += 1
        seg_path = Path(entries[case]["outputs"]["dicom-seg"])
        assert dciodvfy_errors(seg_path) == []
        labels = read_image(entries[case]["outputs"]["nifti"]).array[0]
        seg = hd.seg.segread(seg_path)
        source = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        if case == "philips":
            frames = [f + 1 for f in read_image(inputs / "philips").metadata["source_frames"]]
            pixels = seg.get_pixels_by_source_frame(str(source[0].ReferencedSOPInstanceUID), frames, combine_segments=True, skip_overlap_checks=True)
        else:
            image = read_image(inputs / case) if case != "ge_study__series" else read_image(series(shared_data, "ge"))
            uids = [uid or None for uid in image.metadata["sop_instance_uids"]]
            if None in uids:  # empty UIDs: the SEG references the file meta's
                import pydicom

                uids = [str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID) for p in image.metadata["source_files"]]
            pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
        assert np.array_equal(pixels, labels), f"{case}: DICOM SEG differs from the NIfTI output"
        if "rtstruct" in entries[case]["outputs"]:
            assert dciodvfy_errors(Path(entries[case]["outputs"]["rtstruct"])) == []
    assert written_segs >= 2, "the bright-region model should label something on real scans"
    assert not list(output.glob(".*tmp*")) and not list(output.glob(".medseg-unpack-*"))


def test_kill_mid_run_then_resume(bright_model, shared_data, tmp_path):
    root, model = bright_model
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index in range(8):  # about a second each: the kill lands mid-batch
        shutil.copy(shared_data / "ct-mr-totalsegmentator" / "example_ct.nii.gz", inputs / f"mr{index}_0000.nii.gz")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "medseg.cli", "predict", "-i", str(inputs), "-o", str(output), "-m", str(model), "--format", "nifti,overlay", "--no-tta"]
    process = subprocess.Popen(command, env=dict(os.environ, MEDSEG_ROOT=str(root)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = output / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if manifest.is_file() and manifest.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    from medseg.inference.manifest import read_manifest

    done_before = {entry["case"] for entry in read_manifest(manifest)}
    assert 2 <= len(done_before) < 8, "the run should have been killed mid-batch"
    finished = {p: p.stat().st_mtime_ns for p in output.iterdir() if not p.name.startswith(".") and p.name != "manifest.jsonl"}
    for path in finished:  # whatever carries a final name is complete
        if path.suffix == ".gz":
            assert read_image(path).array.shape[1:] == read_image(inputs / "mr0_0000.nii.gz").array.shape[1:]
    result = run_cli("predict", "-i", inputs, "-o", output, "-m", model, "--format", "nifti,overlay", "--no-tta", "--resume", root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(done_before)} already complete (resumed)" in result.stdout
    for path, mtime in finished.items():
        if path.stem.split(".")[0] in done_before:
            assert path.stat().st_mtime_ns == mtime, f"{path.name} was redone"
    entries = read_manifest(manifest)
    assert {e["case"] for e in entries if e["status"] == "done"} == {f"mr{i}" for i in range(8)}
    assert len(entries) == 8, "each case is recorded once"
    assert not list(output.glob(".*tmp*"))


def test_onnx_export_predicts_as_pytorch_does(bright_model, tmp_path):
    """`medseg export` then `predict --runtime onnx`: the same segmentation, the same float16-stored probabilities within 1e-3."""
    require_peer("onnxruntime")
    root, model = bright_model
    export = tmp_path / "exported"
    run_cli("export", model, "--format", "onnx", "-o", export, check=True)
    info = json.loads((export / "onnx.json").read_text())
    assert info["folds"] == ["0"] and max(info["max_abs_difference_vs_torch"].values()) < 1e-3
    assert (export / "fold_0" / "network.onnx").is_file() and (export / "plans.json").is_file()
    assert "not empty" in run_cli("export", model, "-o", export).stderr  # an export is never half-replaced
    image = root / "raw" / DATASET / "imagesTr" / "case_001_0000.nii.gz"
    outputs = {}
    for runtime, folder in (("torch", model), ("onnx", export)):
        outputs[runtime] = tmp_path / runtime
        run_cli("predict", "-m", folder, "-i", image, "-o", outputs[runtime], "--runtime", runtime, "--save-probabilities", "--precision", "float32", check=True)
    torch_labels, onnx_labels = (read_image(outputs[r] / "case_001.nii.gz").array for r in ("torch", "onnx"))
    assert np.array_equal(torch_labels, onnx_labels) and torch_labels.any()
    difference = np.abs(np.load(outputs["torch"] / "case_001.probabilities.npz")["probabilities"] - np.load(outputs["onnx"] / "case_001.probabilities.npz")["probabilities"])
    assert difference.max() < 1e-3, difference.max()  # probabilities are stored in float16: one step near 1 is 4.9e-4
    refused = run_cli("predict", "-m", tmp_path, "-i", image, "-o", tmp_path / "none", "--runtime", "onnx")
    assert refused.returncode == 1 and "no ONNX export here" in refused.stderr
    # bf16 autocast: the forward in bfloat16, the same segmentation but for a few boundary voxels
    run_cli("predict", "-m", model, "-i", image, "-o", tmp_path / "bf16", "--precision", "bfloat16", check=True)
    assert (read_image(tmp_path / "bf16" / "case_001.nii.gz").array == torch_labels).mean() > 0.99
    mixed = run_cli("predict", "-m", export, "-i", image, "-o", tmp_path / "none", "--runtime", "onnx", "--precision", "bfloat16")
    assert mixed.returncode == 1 and "runs in float32" in mixed.stderr


@pytest.fixture
def ray_cluster():
    """A real local Ray cluster (head node on a loopback port), stopped afterwards."""
    require_peer("ray")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    started = subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_backend_writes_each_case_once_as_the_local_run_does(bright_model, ray_cluster, tmp_path):
    root, model = bright_model
    inputs = copy_bright_images(root, tmp_path / "in")
    (inputs / "corrupt_0000.nii.gz").write_bytes(b"not a nifti")
    local, spread = tmp_path / "local", tmp_path / "ray"
    assert run_cli("predict", "-i", inputs, "-o", local, "-m", model, "--no-tta").returncode == 1
    result = run_cli("predict", "-i", inputs, "-o", spread, "-m", model, "--no-tta", "--backend", "ray", "--address", ray_cluster, "--workers", "2")
    assert result.returncode == 1, result.stdout + result.stderr  # the corrupt case fails, the others are done
    lines = (spread / "manifest.jsonl").read_text().splitlines()
    entries = {entry["case"]: entry for entry in map(json.loads, lines)}
    assert len(lines) == len(entries) == 4  # one line per case
    assert entries["corrupt"]["status"] == "failed" and "corrupt_0000.nii.gz" in entries["corrupt"]["error"]
    assert len({entry["worker"]["pid"] for entry in entries.values()}) == 2  # both actors took cases
    for index in range(3):
        case = f"case_{index:03d}"
        assert entries[case]["status"] == "done" and entries[case]["folds"] == ["0"]
        ours, theirs = read_image(spread / f"{case}.nii.gz"), read_image(local / f"{case}.nii.gz")
        assert np.array_equal(ours.array, theirs.array) and ours.array.any()
    # resume on the cluster: nothing done is redone
    again = run_cli("predict", "-i", inputs, "-o", spread, "-m", model, "--no-tta", "--backend", "ray", "--address", ray_cluster, "--resume")
    assert "3 already complete" in again.stdout, again.stdout
    resumed = read_manifest(spread / "manifest.jsonl")  # one line per case; only the failed case ran again
    assert len(resumed) == 4 and sorted(entry["attempt"] for entry in resumed) == [1, 1, 1, 2], resumed


def test_tta_axes_pick_a_subset_of_the_trained_mirroring(bright_model, tmp_path):
    from medseg.errors import MedsegError
    from medseg.tasks import PredictorOptions, open_predictor

    def mirror_axes(mirror):
        return open_predictor(model, PredictorOptions(mirror=mirror)).mirror_axes

    root, model = bright_model
    allowed = mirror_axes(True)
    assert len(allowed) >= 2
    assert mirror_axes(list(reversed(allowed[1:]))) == allowed[1:]
    assert mirror_axes(False) == ()
    with pytest.raises(MedsegError, match="was not trained"):
        mirror_axes([7])
    image = root / "raw" / DATASET / "imagesTr" / "case_000_0000.nii.gz"
    assert "expected comma-separated axis numbers" in run_cli("predict", "-m", model, "-i", image, "-o", tmp_path / "o", "--tta-axes", "x").stderr
    assert "contradict" in run_cli("predict", "-m", model, "-i", image, "-o", tmp_path / "o", "--tta-axes", "1", "--no-tta").stderr


def test_dicom_outputs_read_each_source_file_twice(bright_model, shared_data, tmp_path, monkeypatch):
    """The folder scan's headers travel with the image: writing DICOM SEG and RTSTRUCT reads no
    source file again (once for its header at the scan, once for its pixels)."""
    from collections import Counter

    import pydicom
    from typer.testing import CliRunner

    from medseg.cli import app

    _, model = bright_model
    source = series(shared_data, "siemens")
    reads: Counter = Counter()
    dcmread = pydicom.dcmread

    def counted(path, *args, **kwargs):
        reads[Path(path).name] += 1
        return dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    result = CliRunner().invoke(app, ["predict", "-i", str(source), "-o", str(tmp_path / "out"), "-m", str(model), "--format", "dicom-seg,rtstruct", "--no-tta"])
    assert result.exit_code == 0, result.output
    assert sorted(reads) == sorted(p.name for p in source.iterdir()) and set(reads.values()) == {2}, reads
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 2
