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


def _nnunet_network(ndim: int, decoder_convs: list[int], residual: bool = False):
    """nnU-Net's PlainConvUNet (or ResidualEncoderUNet) with deep supervision, and its plans entry."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from torch import nn

    depth = {"n_blocks_per_stage": [1, 3, 2]} if residual else {"n_conv_per_stage": [2, 1, 2]}
    kwargs = {
        "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3] * ndim, [3] * ndim, [1] + [3] * (ndim - 1)],
        "strides": [[1] * ndim, [2] * ndim, [1] + [2] * (ndim - 1)], **depth,
        "n_conv_per_stage_decoder": decoder_convs, "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    built = {
        **kwargs, "conv_op": nn.Conv2d if ndim == 2 else nn.Conv3d, "norm_op": nn.InstanceNorm2d if ndim == 2 else nn.InstanceNorm3d,
        "nonlin": nn.LeakyReLU,
    }
    network_class = ResidualEncoderUNet if residual else PlainConvUNet
    network = network_class(input_channels=2, num_classes=3, deep_supervision=True, **built)
    architecture = {"network_class_name": f"dynamic_network_architectures.architectures.unet.{network_class.__name__}", "arch_kwargs": kwargs}
    return network, architecture


@pytest.mark.parametrize("residual", [False, True], ids=["PlainConvUNet", "ResidualEncoderUNet"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_nnunet_network_weights_run_in_medseg(ndim, residual, tmp_path):
    """Every deep-supervision output of nnU-Net's network equals medseg's on the renamed weights;
    uneven decoder depths catch a decoder counted the wrong way round, uneven block counts a
    residual stage read the wrong way."""
    require_peer("dynamic_network_architectures")
    from medseg.models.registry import build_model
    from medseg.nnunet_model_folder import network_from_nnunet, rename_nnunet_weights

    torch.manual_seed(0)
    theirs, architecture = _nnunet_network(ndim, [1, 3], residual)
    with torch.no_grad():  # non-trivial norms, so a norm/conv swap cannot pass
        for name, parameter in theirs.named_parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    family, kwargs = network_from_nnunet(architecture, tmp_path)
    assert family == ("resenc_unet" if residual else "unet")
    ours = build_model({"name": family, "kwargs": kwargs}, 2, 3, deep_supervision=True)
    ours.load_state_dict(rename_nnunet_weights(theirs.state_dict(), tmp_path, family))
    x = torch.randn(2, 2, *([8] * ndim))
    with torch.no_grad():
        for mine, reference in zip(ours.eval()(x), theirs.eval()(x), strict=True):
            assert torch.allclose(mine, reference, atol=1e-5), float((mine - reference).abs().max())


def _plans(**configuration) -> dict:
    _, architecture = _nnunet_network(3, [2, 2])
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
    residual = _plans(architecture={"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualUNet", "arch_kwargs": {}})
    _, bottleneck = _nnunet_network(3, [2, 2], residual=True)
    bottleneck["arch_kwargs"]["block"] = "dynamic_network_architectures.building_blocks.residual.BottleneckD"
    cases = [
        (residual, dataset, "ResidualUNet' is not supported"),
        (_plans(architecture=bottleneck), dataset, "block dynamic_network_architectures.building_blocks.residual.BottleneckD"),
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
def _train_with_nnunet(work: Path, iterations: int, planner: str = "ExperimentPlanner") -> Path:
    """Six bright-blob volumes (the hospital tests' task: real scans get labels too) planned,
    preprocessed and trained (one fold, a few iterations) by nnunetv2's own code."""
    require_peer("nnunetv2")
    build_bright_dataset(work / "raw" / DATASET, cases=6)
    result = subprocess.run(
        [sys.executable, "-m", "tests.peers.nnunet_train", str(work / "raw"), "991", str(work), "3d_fullres", str(iterations), planner],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = Path([line for line in result.stdout.splitlines() if line.startswith("MODEL=")][-1][len("MODEL="):])
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    return folder


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("nnunet")
    return work, _train_with_nnunet(work, 40)


def _nnunet_predicts(work: Path, model: Path, inputs: Path, output: Path) -> None:
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"), nnUNet_results=str(work / "results"))
    predictor = Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder"
    result = subprocess.run(
        [str(predictor), "-i", str(inputs), "-o", str(output), "-m", str(model), "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1", "--save_probabilities"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_nnunet_cascade_model_folder_predicts_as_nnunetv2_does(tmp_path):
    """nnunetv2 trains 3d_lowres (five folds) and 3d_cascade_fullres; `medseg predict -m` on the
    cascade folder runs its 3d_lowres sibling first, as nnU-Net's two predict calls do."""
    require_peer("nnunetv2")
    from tests.e2e.test_cascade import _cascade_dataset

    work = tmp_path / "work"
    _cascade_dataset(work / "raw" / "Dataset993_Cascade", cases=5)
    result = subprocess.run(
        [sys.executable, "-m", "tests.peers.nnunet_train", str(work / "raw"), "993", str(work), "3d_cascade_fullres", "6", "ExperimentPlanner", "0.02"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = Path([line for line in result.stdout.splitlines() if line.startswith("MODEL=")][-1][len("MODEL="):])
    assert model.name == "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    lowres = model.parent / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "other_0000.nii.gz").symlink_to(work / "raw" / "Dataset993_Cascade" / "imagesTr" / "case_001_0000.nii.gz")
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"), nnUNet_results=str(work / "results"))
    predictor = str(Path(sys.executable).parent / "nnUNetv2_predict_from_modelfolder")
    common = ["-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]  # mirroring is compared by the other nnU-Net tests
    for command in (
        [predictor, "-i", str(inputs), "-o", str(tmp_path / "first"), "-m", str(lowres), "-f", "0", "1", "2", "3", "4", *common],
        [predictor, "-i", str(inputs), "-o", str(tmp_path / "nnunet"), "-m", str(model), "-f", "0", "-prev_stage_predictions", str(tmp_path / "first"), *common],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_cli("predict", "-m", model, "-i", inputs, "-o", tmp_path / "medseg", "--folds", "0", "--no-tta", "--precision", "float32", check=True)
    mine, reference = read_image(tmp_path / "medseg" / "other.nii.gz"), read_image(tmp_path / "nnunet" / "other.nii.gz")
    first_stage = read_image(tmp_path / "first" / "other.nii.gz")
    assert len(np.unique(first_stage.array)) > 1  # the first stage segments something: the cascade's extra channels are not blank

    # the cascade stage, fed nnU-Net's own first-stage labels, gives nnU-Net's labels
    from medseg.tasks import PredictorOptions, open_predictor
    from medseg.tasks.segmentation.cascade import with_previous_stage
    from medseg.tasks.segmentation.preprocessing.case import preprocess_case

    predictor = open_predictor(model, PredictorOptions(folds=["0"], mirror=False, precision="float32"))
    image = read_image(inputs / "other_0000.nii.gz")
    data, resampled, properties = preprocess_case(image, first_stage.array, predictor.plans, predictor.configuration, "other")
    second_stage = predictor.predict_preprocessed(with_previous_stage(data, resampled[0], predictor.plans.num_classes), properties)
    assert (second_stage.segmentation.array == reference.array).mean() > 0.999
    # both stages in medseg: the first stage's own near-ties (a 6-iteration model ensembled over five
    # folds, resampled from 1.27 mm) move its labels on ~0.2% of the voxels, and the cascade follows
    assert (mine.array == reference.array).mean() > 0.99


@pytest.mark.slow
def test_nnunet_region_based_model_folder_predicts_as_nnunetv2_does(tmp_path):
    """A region-based model (nested regions, sigmoid outputs, regions_class_order) trained by nnunetv2."""
    require_peer("nnunetv2")
    from tests.e2e.test_regions_and_ignore import _dataset

    work = tmp_path / "work"
    _dataset(work / "raw" / "Dataset994_Regions", {"background": 0, "whole": [1, 2], "core": 2}, {"regions_class_order": [1, 2]}, cases=6)
    result = subprocess.run(
        [sys.executable, "-m", "tests.peers.nnunet_train", str(work / "raw"), "994", str(work), "3d_fullres", "30"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = Path([line for line in result.stdout.splitlines() if line.startswith("MODEL=")][-1][len("MODEL="):])
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "other_0000.nii.gz").symlink_to(work / "raw" / "Dataset994_Regions" / "imagesTr" / "case_001_0000.nii.gz")
    _nnunet_predicts(work, model, inputs, tmp_path / "nnunet")
    run_cli("predict", "-m", model, "-i", inputs, "-o", tmp_path / "medseg", "--save-probabilities", "--precision", "float32", check=True)
    mine, reference = read_image(tmp_path / "medseg" / "other.nii.gz"), read_image(tmp_path / "nnunet" / "other.nii.gz")
    assert len(np.unique(reference.array)) > 1 and set(np.unique(reference.array)) <= {0, 1, 2}
    assert (mine.array == reference.array).mean() > 0.999
    difference = np.abs(np.load(tmp_path / "medseg" / "other.probabilities.npz")["probabilities"] - np.load(tmp_path / "nnunet" / "other.npz")["probabilities"])
    assert difference.mean() < 1e-3, difference.mean()


@pytest.mark.slow
def test_nnunet_resenc_model_folder_predicts_as_nnunetv2_does(tmp_path):
    """A ResEnc M model trained by nnunetv2 (nnUNetPlannerResEncM) runs as medseg's resenc_unet."""
    work = tmp_path / "work"
    model = _train_with_nnunet(work, 20, "nnUNetPlannerResEncM")
    assert model.name == "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    described = json.loads(run_cli("describe", model, "--json", check=True).stdout)
    assert described["family"] == "resenc_unet", described
    inputs = _resampled_case(work)
    _nnunet_predicts(work, model, inputs, tmp_path / "nnunet")
    run_cli("predict", "-m", model, "-i", inputs, "-o", tmp_path / "medseg", "--save-probabilities", "--precision", "float32", check=True)
    mine, reference = read_image(tmp_path / "medseg" / "other.nii.gz"), read_image(tmp_path / "nnunet" / "other.nii.gz")
    assert (mine.array == reference.array).mean() > 0.999
    difference = np.abs(np.load(tmp_path / "medseg" / "other.probabilities.npz")["probabilities"] - np.load(tmp_path / "nnunet" / "other.npz")["probabilities"])
    assert difference.mean() < 1e-3, difference.mean()


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
    _nnunet_predicts(work, model, inputs, theirs)

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


def test_an_nnunet_folder_is_calibrated_from_its_own_validation(nnunet_model, tmp_path):
    """`medseg calibrate` on an nnU-Net folder: without saved probabilities it says input checks only;
    after `nnUNetv2_train --val --npz` it fits calibration.json from nnU-Net's validation, and predict
    writes the expected Dice."""
    import shutil

    source_work, source_model = nnunet_model
    work = tmp_path / "work"
    shutil.copytree(source_work, work, symlinks=True)
    model = work / source_model.relative_to(source_work)
    shutil.rmtree(model / "fold_0" / "validation", ignore_errors=True)
    without = run_cli("calibrate", model, check=True)
    said = " ".join(without.stdout.split())
    assert "no calibration: fold 0 has no validation" in said and "input checks only" in said and not (model / "calibration.json").exists()

    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"), nnUNet_results=str(work / "results"),
               nnUNet_compile="false", nnUNet_n_proc_DA="0")
    trainer = Path(sys.executable).parent / "nnUNetv2_train"
    validated = subprocess.run([str(trainer), "991", "3d_fullres", "0", "--val", "--npz", "-device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-3000:]
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    fitted = run_cli("calibrate", model, check=True)
    assert "fitting on nnU-Net's validation" in fitted.stdout and (model / "calibration.json").is_file()
    calibration = json.loads((model / "calibration.json").read_text())
    label = next(iter(calibration["labels"]))
    assert calibration["labels"][label]["cases"] == len(summary["metric_per_case"])  # every held-out case, this label

    inputs = _resampled_case(work)
    run_cli("predict", "-m", model, "-i", inputs, "-o", tmp_path / "out", "--no-tta", check=True)
    entry = json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["expected_dice"] and label in entry["expected_dice"], entry
