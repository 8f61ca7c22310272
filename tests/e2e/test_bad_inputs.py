"""Bad inputs through the real CLI: a generated corpus of broken files of every supported format,
huge headers, NaN/Inf images, wrong channels and dimensionality, unusable outputs, corrupt model
folders and DICOM oddities, each through `info`, `convert`, `predict`, `evaluate` and
`datasets check`. Every case ends in a clear error naming the file (exit 1), or in a documented
correct result; the "unexpected" path is for medseg's own bugs only."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from medseg.io import MedicalImage, write_image
from tests.conftest import run_cli

DATASET = "Dataset901_AbdomenMRI-demo"
VOLUME_FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")
PLANE_FORMATS = (".png", ".jpg", ".tif")


def _volume(shape=(6, 10, 12), dtype=np.float32) -> MedicalImage:
    array = np.random.default_rng(0).normal(size=(1, *shape)).astype(dtype)
    return MedicalImage(array, (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))


def _plane() -> MedicalImage:
    array = np.random.default_rng(0).integers(0, 255, size=(1, 16, 20)).astype(np.uint8)
    return MedicalImage(array, (1.0, 1.0), (0.0, 0.0), np.eye(2))


def _huge_nifti(path: Path, template: Path) -> None:
    """A valid small NIfTI whose header claims 1500^3 voxels."""
    data = bytearray(template.read_bytes() if template.suffix == ".nii" else gzip.decompress(template.read_bytes()))
    struct.pack_into("<8h", data, 40, 3, 1500, 1500, 1500, 1, 1, 1, 1)
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))


def _bomb_png(path: Path) -> None:
    """A tiny PNG whose header claims 30000 x 30000 pixels (Pillow's decompression-bomb guard)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _huge_nrrd(path: Path) -> None:
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\nendian: little\n\n" + b"\0" * 64)


def broken_files(folder: Path) -> dict[str, Path]:
    """Name -> a file no reader may accept silently."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    files = {}
    for suffix in VOLUME_FORMATS + PLANE_FORMATS:
        valid = folder / f"valid{suffix}"
        write_image(_volume() if suffix in VOLUME_FORMATS else _plane(), valid)
        content = valid.read_bytes()
        stem = suffix.replace(".", "_").strip("_")
        for kind, data in (("zero", b""), ("truncated", content[: len(content) // 2]), ("garbage", rng.bytes(3000))):
            path = folder / f"{kind}_{stem}{suffix}"
            path.write_bytes(data)
            files[path.name] = path
        valid.unlink()
    for suffix in (".nii", ".nii.gz"):
        template = folder / f"template{suffix}"
        write_image(_volume(), template)
        files[f"huge{suffix}"] = folder / f"huge_header{suffix}"
        _huge_nifti(files[f"huge{suffix}"], template)
        template.unlink()
    files["huge.nrrd"] = folder / "huge_header.nrrd"
    _huge_nrrd(files["huge.nrrd"])
    files["bomb.png"] = folder / "bomb.png"
    _bomb_png(files["bomb.png"])
    files["zero.dcm"] = folder / "zero.dcm"
    files["zero.dcm"].write_bytes(b"")
    files["garbage.dcm"] = folder / "garbage.dcm"
    files["garbage.dcm"].write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(500))
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return broken_files(tmp_path_factory.mktemp("corpus"))


def _assert_clear_error(result, *names: str) -> None:
    output = result.stderr.strip()
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout[-500:]} {output[-500:]}"
    assert "unexpected" not in output and "Traceback" not in output, output
    for name in names:
        assert name in output, f"{name} not named in: {output}"


def _single_error_line(result) -> None:
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr


CORPUS_NAMES = [f"{kind}_{s.replace('.', '_').strip('_')}{s}" for s in VOLUME_FORMATS + PLANE_FORMATS for kind in ("zero", "truncated", "garbage")]
CORPUS_NAMES += ["huge.nii", "huge.nii.gz", "huge.nrrd", "bomb.png", "zero.dcm", "garbage.dcm"]


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_info_and_convert_name_the_broken_file(corpus, name, tmp_path):
    path = corpus[name]
    for args in (("info", path), ("convert", path, tmp_path / "out.nii.gz")):
        result = run_cli(*args)
        _assert_clear_error(result, path.name)
        _single_error_line(result)
    assert not any(tmp_path.iterdir())  # nothing written


def test_huge_headers_are_refused_before_allocating(corpus):
    """The header is checked against the file (and $MEDSEG_MAX_IMAGE_GB) before any pixel is read."""
    for name in ("huge.nii", "huge.nii.gz", "huge.nrrd"):
        result = run_cli("info", corpus[name])
        assert "header claims shape" in result.stderr or "unpacks to" in result.stderr or "Expected" in result.stderr, result.stderr
    assert "decompression" in run_cli("info", corpus["bomb.png"]).stderr.lower()


def test_convert_output_rules(tmp_path):
    source = tmp_path / "image.nii.gz"
    write_image(_volume(), source)
    same = run_cli("convert", source, source)
    _assert_clear_error(same, "is the input itself")
    target = tmp_path / "out.nrrd"
    run_cli("convert", source, target, check=True)
    again = run_cli("convert", source, target)
    _assert_clear_error(again, "out.nrrd", "--overwrite")
    run_cli("convert", source, target, "--overwrite", check=True)
    under_file = run_cli("convert", source, source / "x.nii.gz")
    _assert_clear_error(under_file, "x.nii.gz")
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # the usual mode, not a temporary's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny 3D model (one iteration) and its MEDSEG_ROOT."""
    root = tmp_path_factory.mktemp("bad_predict")
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "3", root=root, check=True)
    run_cli("fingerprint", "AbdomenMRI-demo", "--workers", "1", root=root, check=True)
    run_cli("plan", "AbdomenMRI-demo", root=root, check=True)
    run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d_fullres", "--workers", "1", root=root, check=True)
    run_cli("train", "AbdomenMRI-demo", "3d_fullres", "0", "--epochs", "1", "--iterations-per-epoch", "1", "--no-validate", root=root, check=True)
    return root, root / "results" / DATASET / "unet__medsegPlans__3d_fullres"


def test_predict_names_every_bad_case_and_writes_the_good_one(trained, corpus, tmp_path):
    root, model = trained
    raw = root / "raw" / DATASET
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(raw / "imagesTr" / "demo_000_0000.nii.gz", inputs / "good_0000.nii.gz")
    for name in ("zero_nii_gz.nii.gz", "truncated_nii_gz.nii.gz", "garbage_nii_gz.nii.gz", "huge_header.nii.gz"):
        shutil.copy(corpus[name.replace("huge_header", "huge")] if name.startswith("huge") else corpus[name], inputs / name.replace(".nii.gz", "_0000.nii.gz"))
    good = np.asarray(__import__("nibabel").load(str(inputs / "good_0000.nii.gz")).dataobj, dtype=np.float32)
    affine = __import__("nibabel").load(str(inputs / "good_0000.nii.gz")).affine
    for name, values in (("somenan", np.where(np.arange(good.size).reshape(good.shape) % 97 == 0, np.nan, good)), ("allnan", np.full_like(good, np.nan)), ("inf", np.where(good > good.mean(), np.inf, good))):
        __import__("nibabel").save(__import__("nibabel").Nifti1Image(values, affine), str(inputs / f"{name}_0000.nii.gz"))
    shutil.copy(inputs / "good_0000.nii.gz", inputs / "twochannel_0000.nii.gz")
    shutil.copy(inputs / "good_0000.nii.gz", inputs / "twochannel_0001.nii.gz")
    from PIL import Image

    Image.fromarray(np.zeros((16, 20, 2), np.uint8), mode="LA").save(inputs / "plane2ch.png")  # grey + alpha
    write_image(_plane(), inputs / "plane.png")
    out = tmp_path / "out"
    result = run_cli("predict", "-i", inputs, "-o", out, "-m", model, "--no-tta", root=root)
    assert result.returncode == 1 and "unexpected" not in result.stderr, result.stderr
    failed = {line.split()[1].rstrip(":"): line for line in result.stderr.splitlines() if line.startswith("failed")}
    expected = {"zero_nii_gz", "truncated_nii_gz", "garbage_nii_gz", "huge_header", "somenan", "allnan", "inf", "twochannel", "plane2ch", "plane"}
    assert set(failed) == expected, result.stderr
    assert "NaN or infinite" in failed["somenan"] and "NaN or infinite" in failed["allnan"] and "NaN or infinite" in failed["inf"]
    assert "2 channel(s)" in failed["twochannel"] and "2D image" in failed["plane"] and "2D image" in failed["plane2ch"]
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz", "manifest.jsonl"]  # the good case, and no temporaries
    from medseg.inference.manifest import read_manifest

    statuses = {entry["case"]: entry["status"] for entry in read_manifest(out / "manifest.jsonl")}
    assert statuses == {**{case: "failed" for case in expected}, "good": "done"}


def test_predict_output_and_input_rules(trained, tmp_path):
    root, model = trained
    image = root / "raw" / DATASET / "imagesTr" / "demo_000_0000.nii.gz"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _assert_clear_error(run_cli("predict", "-i", image, "-o", a_file, "-m", model, root=root), "file.txt", "not a folder")
    _assert_clear_error(run_cli("predict", "-i", image, "-o", a_file / "sub", "-m", model, root=root), "file.txt is a file")
    _assert_clear_error(run_cli("predict", "-i", tmp_path / "nothing", "-o", tmp_path / "o", "-m", model, root=root), "nothing", "no such file")
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".demo_000.nii.gz.{2**22 + 12345}.tmp.nii.gz"  # a killed run's temporary (no such process)
    stale.write_bytes(b"half")
    run_cli("predict", "-i", image, "-o", out, "-m", model, "--no-tta", root=root, check=True)
    assert not stale.exists() and (out / "demo_000.nii.gz").is_file()
    assert oct((out / "demo_000.nii.gz").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_predict_reads_a_dicom_folder_as_one_series(trained, shared_data, tmp_path):
    root, model = trained
    series = shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001"
    out = tmp_path / "out"
    result = run_cli("predict", "-i", series, "-o", out, "-m", model, "--no-tta", root=root, check=True)
    assert "wrote 1 output(s)" in result.stdout
    from medseg.io import read_image

    written = read_image(out / "001.nii.gz")
    assert not written.geometry_differences(read_image(series))
    # a NIfTI file beside the slices is a case of its own; the series is still read whole
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed)
    shutil.copy(root / "raw" / DATASET / "imagesTr" / "demo_000_0000.nii.gz", mixed / "stray.nii.gz")
    result = run_cli("predict", "-i", mixed, "-o", tmp_path / "out_mixed", "-m", model, "--no-tta", root=root, check=True)
    assert "2 case(s) done" in result.stdout
    assert not read_image(tmp_path / "out_mixed" / "mixed.nii.gz").geometry_differences(read_image(series))
    assert (tmp_path / "out_mixed" / "stray.nii.gz").is_file()


@pytest.mark.parametrize("defect", ["garbage", "garbage_pickle", "unsafe", "not_json", "missing_keys"])
def test_damaged_model_folder_is_refused(trained, tmp_path, defect):
    import torch

    root, model = trained
    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    checkpoint = folder / "fold_0" / "checkpoint_final.pt"
    if defect == "garbage":
        checkpoint.write_bytes(os.urandom(2000))
    elif defect == "garbage_pickle":  # a pickle header with an unknown protocol: torch warns before it refuses
        checkpoint.write_bytes(b"\x80\x4b" + np.random.default_rng(0).bytes(2000))
    elif defect == "unsafe":  # a pickle that would run code under weights_only=False
        torch.save({"network": {}, "payload": np.zeros(3)}, checkpoint)
    elif defect == "not_json":
        (folder / "model.json").write_text("{not json")
    else:
        (folder / "model.json").write_text(json.dumps({"model": "unet"}))
    result = run_cli("predict", "-i", root / "raw" / DATASET / "imagesTr" / "demo_000_0000.nii.gz", "-o", tmp_path / "out", "-m", folder, root=root)
    _assert_clear_error(result, "checkpoint_final.pt" if defect in ("garbage", "garbage_pickle", "unsafe") else "model.json")
    _single_error_line(result)
    if defect == "unsafe":
        assert "without running code" in result.stderr


# --------------------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_unusable_predictions(trained, corpus, tmp_path):
    root, _ = trained
    raw = root / "raw" / DATASET
    for defect in ("garbage", "wrong_shape", "undeclared_label"):
        predictions = tmp_path / defect
        predictions.mkdir()
        for case in ("demo_000", "demo_001", "demo_002"):
            shutil.copy(raw / "labelsTr" / f"{case}.nii.gz", predictions / f"{case}.nii.gz")
        bad = predictions / "demo_001.nii.gz"
        if defect == "garbage":
            shutil.copy(corpus["garbage_nii_gz.nii.gz"], bad)
        elif defect == "wrong_shape":
            write_image(MedicalImage(np.zeros((1, 4, 4, 4), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), bad)
        else:
            from medseg.io import read_image

            label = read_image(raw / "labelsTr" / "demo_001.nii.gz")
            values = label.array.copy()
            values[values == 1] = 9
            write_image(label.with_array(values), bad)
        result = run_cli("evaluate", predictions, raw / "labelsTr", "-j", raw / "dataset.json", root=root)
        _assert_clear_error(result, "demo_001.nii.gz", "cannot be scored")
        assert not (predictions / "summary.json").exists()
    assert "not declared" in result.stderr


# --------------------------------------------------------------------------------- datasets check
def test_check_names_every_broken_case(corpus, tmp_path):
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "2", "--out", tmp_path / "Dataset901_AbdomenMRI-demo", check=True)
    folder = tmp_path / "Dataset901_AbdomenMRI-demo"
    label = folder / "labelsTr" / "demo_000.nii.gz"
    names = {"zero": "zero_nii_gz.nii.gz", "truncated": "truncated_nii_gz.nii.gz", "garbage": "garbage_nii_gz.nii.gz", "huge": "huge.nii.gz"}
    for case, name in names.items():
        shutil.copy(corpus[name], folder / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(label, folder / "labelsTr" / f"{case}.nii.gz")
    content = json.loads((folder / "dataset.json").read_text())
    content["numTraining"] += len(names)
    (folder / "dataset.json").write_text(json.dumps(content))
    result = run_cli("datasets", "check", folder)
    assert result.returncode == 1 and "unexpected" not in result.stdout, result.stdout
    for case in names:
        assert f"{case}_0000.nii.gz" in result.stdout, case


# ------------------------------------------------------------------------------------------ DICOM
def _series_copy(shared_data: Path, target: Path) -> list[Path]:
    shutil.copytree(shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001", target)
    return sorted(p for p in target.iterdir() if p.is_file())


def _nested_sequence(depth: int) -> bytes:
    """Explicit-VR little-endian bytes of a private sequence nested ``depth`` items deep."""
    opening = struct.pack("<HH", 0x0029, 0x1010) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (opening + item) * depth + closing * depth


def _dicom_defect(shared_data: Path, folder: Path, defect: str) -> Path:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    files = _series_copy(shared_data, folder)
    if defect == "no_file_meta":  # no preamble, no file meta: still a readable series (as SimpleITK reads it)
        for path in files:
            dataset = pydicom.dcmread(path)
            dataset.decompress() if dataset.file_meta.TransferSyntaxUID.is_compressed else None
            del dataset.file_meta
            dataset.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    elif defect == "missing_positions":
        dataset = pydicom.dcmread(files[1])
        del dataset.ImagePositionPatient
        dataset.save_as(files[1])
    elif defect == "no_pixel_data":
        dataset = pydicom.dcmread(files[2])
        del dataset.PixelData
        dataset.save_as(files[2])
    elif defect == "pixel_length":
        dataset = pydicom.dcmread(files[2])
        dataset.decompress() if dataset.file_meta.TransferSyntaxUID.is_compressed else None
        dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 3]
        dataset.save_as(files[2])
    elif defect == "deep_nesting":
        dataset = pydicom.dcmread(files[0])
        dataset.decompress() if dataset.file_meta.TransferSyntaxUID.is_compressed else None
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        pixels = dataset.PixelData
        del dataset.PixelData
        dataset.save_as(files[0], implicit_vr=False, little_endian=True)
        pixel_element = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", len(pixels)) + pixels
        files[0].write_bytes(files[0].read_bytes() + _nested_sequence(5000) + pixel_element)
    return folder


@pytest.mark.parametrize("defect", ["missing_positions", "no_pixel_data", "pixel_length", "deep_nesting"])
def test_dicom_defects_end_in_a_clear_error(shared_data, tmp_path, defect):
    folder = _dicom_defect(shared_data, tmp_path / defect, defect)
    for args in (("info", folder), ("convert", folder, tmp_path / "out.nii.gz")):
        result = run_cli(*args)
        _assert_clear_error(result)
        _single_error_line(result)
        assert "001" in result.stderr or "IM" in result.stderr or "Siemens" in result.stderr or "DICOM" in result.stderr
    assert not (tmp_path / "out.nii.gz").exists()


def test_dicom_without_file_meta_is_read_and_listed(shared_data, tmp_path):
    """`dicom list` and `convert` agree: files without the file meta header are one readable series."""
    from medseg.io import read_image

    folder = _dicom_defect(shared_data, tmp_path / "no_meta", "no_file_meta")
    listing = run_cli("dicom", "list", folder, check=True).stdout
    assert "4" in listing
    run_cli("convert", folder, tmp_path / "out.nii.gz", check=True)
    original = read_image(shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001")
    converted = read_image(tmp_path / "out.nii.gz")
    assert not converted.geometry_differences(original) and np.array_equal(converted.array, original.array)


def test_series_rule_with_uid_prefix(shared_data):
    from medseg.io import read_image

    folder = shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001"
    uid = read_image(folder).metadata.get("series_instance_uid") or __import__("pydicom").dcmread(next(p for p in folder.iterdir() if p.is_file())).SeriesInstanceUID
    assert read_image(folder, series=f"uid:{uid}").spatial_shape == read_image(folder).spatial_shape


def test_write_errors_name_the_output_not_a_temporary(tmp_path):
    from medseg.errors import ImageWriteError

    with pytest.raises(ImageWriteError) as caught:
        write_image(MedicalImage(np.zeros((2, 16, 20), np.uint8), (1.0, 1.0), (0.0, 0.0), np.eye(2)), tmp_path / "two.png")
    assert str(caught.value).startswith(f"{tmp_path / 'two.png'}:") and ".tmp" not in str(caught.value)
    assert not any(tmp_path.iterdir())


def test_geometry_messages_label_each_value():
    image = _volume()
    label = MedicalImage(np.zeros_like(image.array), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    assert image.geometry_differences(label, names=("image", "label")) == ["spacing (3, 1, 1) (image) vs (2, 1, 1) (label)"]


def test_dicom_folders_are_one_input(shared_data):
    """Files without a suffix, or with UID-like names (CT.1.3.12...), are recognised as one DICOM input."""
    from medseg.inference.inputs import discover

    for folder in (shared_data / "ct-mr-totalsegmentator" / "example_ct_dicom", shared_data / "dicom-series-dicom2nifti" / "ge" / "anatomical" / "001"):
        cases = discover(folder).cases
        assert [case.case_id for case in cases] == [folder.name]
        assert cases[0].series is not None and sorted(cases[0].files) == sorted(p for p in folder.iterdir() if p.is_file())


def test_unwritable_outputs_are_named(trained):
    """/proc takes no files, even from root (CI runs as root, so permissions alone cannot show this)."""
    root, model = trained
    image = root / "raw" / DATASET / "imagesTr" / "demo_000_0000.nii.gz"
    result = run_cli("predict", "-i", image, "-o", "/proc/medseg_out", "-m", model, root=root)
    _assert_clear_error(result, "/proc/medseg_out")
    _single_error_line(result)
    result = run_cli("convert", image, "/proc/medseg_out.nii.gz")
    _assert_clear_error(result, "/proc/medseg_out.nii.gz", "cannot write")
    _single_error_line(result)
