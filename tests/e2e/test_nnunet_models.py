"""nnU-Net v2 trained model folders as `medseg predict -m`: the weights' renaming is exact, a model
trained by nnunetv2's own code predicts as nnunetv2's predictor does, and what medseg cannot run
the same way is refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.errors import MedsegError
from medseg.io import MedicalImage, read_image, write_image
from tests.conftest import REPO, build_bright_dataset, require_peer, run_cli

DATASET = "Dataset991_Bright"


def _plain_conv_unet(ndim: int, decoder_convs: list[int]):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    kwargs = {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3] * ndim, [3] * ndim, [1] + [3] * (ndim - 1)],
        "strides": [[1] * ndim, [2] * ndim, [1] + [2] * (ndim - 1)], "n_conv_per_stage": [2, 1, 2],
        "n_conv_per_stage_decoder": decoder_convs, "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    built = {
        **kwargs, "conv_op": nn.Conv2d if ndim == 2 else nn.Conv3d, "norm_op": nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d,
        "nonlin": nn.LeakyReLU,
    }
    network = PlainConvUNet(input_channels=2, num_classes=3, deep_supervision=True, **built)
    architecture = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": kwargs}
    return network, architecture


@pytest.mark.parametrize("ndim", [2, 3])
def test_plain_conv_unet_weights_run_in_medseg_unet(ndim, tmp_path):
    """Every deep-supervision output of nnU-Net's network equals medseg's on the renamed weights;
    uneven decoder depths catch a decoder counted the wrong way round."""
    require_peer("dynamic_network_architectures")
    from medseg.models.registry import build_model
    from medseg.nnunet_model_folder import rename_plain_conv_unet, unet_kwargs_from_nnunet

    torch.manual_seed(0)
    theirs, architecture = _plain_conv_unet(ndim, [1, 3])
    with torch.no_grad():  # non-trivial norms, so a norm/conv swap cannot pass
        for name, parameter in theirs.named_parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    ours = build_model({"name": "unet", "kwargs": unet_kwargs_from_nnunet(architecture, tmp_path)}, 2, 3, deep_supervision=True)
    ours.load_state_dict(rename_plain_conv_unet(theirs.state_dict(), tmp_path))
    x = torch.randn(2, 2, *([8] * ndim))
    with torch.no_grad():
        for mine, reference in zip(ours.eval()(x), theirs.eval()(x), strict=True):
            assert torch.allclose(mine, reference, atol=1e-5), float((mine - reference).abs().max())


def _plans(**configuration) -> dict:
    _, architecture = _plain_conv_unet(3, [2, 2])
    base = {
        "data_identifier": "x", "batch_size": 2, "patch_size": [8, 8, 8], "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False], "architecture": architecture,
    }
    return {
        "dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "transpose_forward": [0, 1, 2], "image_reader_writer": "SimpleITKIO",
        "configurations": {"3d_fullres": {**base, **configuration}}, "foreground_intensity_properties_per_channel": {"0": {}},
    }


def test_what_medseg_cannot_run_alike_is_refused(tmp_path):
    require_peer("dynamic_network_architectures")
    from medseg.nnunet_model_folder import translate_plans

    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "file_ending": ".nii.gz"}
    plans = translate_plans(_plans(), dataset, "3d_fullres", tmp_path)
    assert plans.configuration("3d_fullres").architecture["name"] == "unet" and plans.num_classes == 2
    residual = _plans(architecture={"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet", "arch_kwargs": {}})
    cases = [
        (residual, dataset, "ResidualEncoderUNet' is not supported"),
        (_plans(previous_stage="3d_lowres"), dataset, "cascade configuration"),
        (_plans(normalization_schemes=["MyNormalization"]), dataset, "normalisation 'MyNormalization' is not supported"),
        (_plans(normalization_schemes=["CTNormalization"]), dataset, "lacks foreground intensity properties"),
        ({**_plans(), "image_reader_writer": "Tiff3DIO"}, dataset, "image reader 'Tiff3DIO'"),
        (_plans(), {**dataset, "labels": {"background": 0, "organ": [1, 2]}}, "region-based"),
    ]
    for plans_dict, dataset_dict, message in cases:
        with pytest.raises(MedsegError, match=message):
            translate_plans(plans_dict, dataset_dict, "3d_fullres", tmp_path)
    plans_dict = _plans()
    plans_dict["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["dropout_op"] = "torch.nn.Dropout3d"
    with pytest.raises(MedsegError, match="dropout_op"):
        translate_plans(plans_dict, dataset, "3d_fullres", tmp_path)


# --------------------------------------------------------------------------- a real nnU-Net model
@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory):
    """Six bright-blob volumes (the hospital tests' task: real scans get labels too) planned,
    preprocessed and trained (one fold, a few iterations) by nnunetv2's own code."""
    require_peer("nnunetv2")
    work = tmp_path_factory.mktemp("nnunet")
    build_bright_dataset(work / "raw" / DATASET, cases=6)
    result = subprocess.run(
        [sys.executable, "-m", "tests.peers.nnunet_train", str(work / "raw"), "991", str(work), "3d_fullres", "40"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = Path([line for line in result.stdout.splitlines() if line.startswith("MODEL=")][-1][len("MODEL="):])
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    return work, folder


def _resampled_case(work: Path) -> Path:
    """A training volume at another spacing (7 mm slices, 3 mm in-plane), so prediction resamples there and back."""
    from scipy import ndimage

    image = read_image(work / "raw" / DATASET / "imagesTr" / "case_002_0000.nii.gz")
    spacing = (7.0, 3.0, 3.0)
    array = ndimage.zoom(image.array[0], [a / b for a, b in zip(image.spacing, spacing)], order=1)
    target = work / "test_input" / "other_0000.nii.gz"
    write_image(MedicalImage(array[None], spacing, image.origin, image.direction), target)
    return target.parent


@pytest.mark.slow
def test_nnunet_model_folder_predicts_as_nnunetv2_does(nnunet_model, tmp_path):
    work, model = nnunet_model
    inputs = _resampled_case(work)
    theirs = tmp_path / "nnunet"
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"), nnUNet_results=str(work / "results"))
    predictor = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    result = subprocess.run(
        [str(predictor), "-i", str(inputs), "-o", str(theirs), "-m", str(model), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ours = tmp_path / "medseg"
    run_cli("predict", "-m", model, "-i", inputs, "-o", ours, "--save-probabilities", "--precision", "float32", check=True)
    mine = read_image(ours / "other.nii.gz")
    reference = read_image(theirs / "other.nii.gz")
    assert mine.spatial_shape == reference.spatial_shape and np.allclose(mine.spacing, reference.spacing)
    probabilities = np.load(ours / "other.probabilities.npz")["probabilities"]
    their_probabilities = np.load(theirs / "other.npz")["probabilities"]
    difference = np.abs(probabilities - their_probabilities)
    # nnU-Net sums gaussian-weighted logits in float16: near the volume's faces, where the weights
    # are ~1e-10, its logits drift up to 0.5 from the network's exact output (medseg's stay within
    # 1e-6 of it, checked by hand on this model), so only the bulk is compared tightly
    assert difference.mean() < 1e-3 and np.percentile(difference, 95) < 0.01, (difference.mean(), np.percentile(difference, 95))
    agreement = (mine.array == reference.array).mean()
    assert agreement > 0.999, agreement
    assert len(np.unique(reference.array)) > 1  # the tiny model segments something: the comparison is not of two blanks

    # every medseg runtime works for it: the ONNX export gives the same labels
    require_peer("onnxruntime")
    exported = tmp_path / "onnx"
    run_cli("export", model, "-o", exported, check=True)
    run_cli("predict", "-m", exported, "-i", inputs, "-o", tmp_path / "onnx_out", "--runtime", "onnx", check=True)
    assert np.array_equal(read_image(tmp_path / "onnx_out" / "other.nii.gz").array, mine.array)


@pytest.mark.slow
def test_nnunet_model_on_a_mixed_folder_writes_valid_seg_and_rtstruct(nnunet_model, shared_data, tmp_path):
    """The hospital batch with an nnU-Net model: DICOM trees, a zip, NIfTI and a corrupt file."""
    from tests.e2e.test_hospital_inference import _mixed_inputs, dciodvfy_errors

    _, model = nnunet_model
    inputs = _mixed_inputs(shared_data, tmp_path / "in")
    output = tmp_path / "out"
    result = run_cli("predict", "-i", inputs, "-o", output, "-m", model, "--format", "nifti,dicom-seg,rtstruct", "--no-tta")
    assert result.returncode == 1, result.stdout + result.stderr  # the corrupt file and the tilted series fail
    entries = {entry["case"]: entry for entry in map(json.loads, (output / "manifest.jsonl").read_text().splitlines())}
    assert {case for case, entry in entries.items() if entry["status"] == "failed"} == {"corrupt", "tilted"}
    assert all(entry["model_name"].startswith("medseg nnU-Net nnUNetTrainer") for entry in entries.values())
    written = [Path(entry["outputs"][fmt]) for entry in entries.values() for fmt in ("dicom-seg", "rtstruct") if fmt in entry["outputs"]]
    assert sum(path.name.endswith(".seg.dcm") for path in written) >= 2, "the bright-blob model should label real scans"
    for path in written:
        assert dciodvfy_errors(path) == [], path


def test_a_damaged_nnunet_folder_is_named(nnunet_model, tmp_path):
    import shutil

    work, model = nnunet_model
    copy = tmp_path / model.name
    shutil.copytree(model, copy)
    checkpoint = copy / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    image = work / "raw" / DATASET / "imagesTr" / "case_000_0000.nii.gz"
    result = run_cli("predict", "-m", copy, "-i", image, "-o", tmp_path / "out")
    assert result.returncode != 0 and "checkpoint_final.pth" in result.stderr and "Traceback" not in result.stderr
