"""MONAI bundles behind `-m`: a small SegResNet bundle written in the test (configs/inference.json,
configs/metadata.json, models/model.pt) predicts through `medseg predict` the label map that
`python -m monai.bundle run` writes for the same real MR volume; its labels carry the bundle's names
into a DICOM SEG of a real DICOM series; broken bundles are refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_image
from tests.conftest import require_peer, run_cli

LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def inference_config() -> dict:
    """A bundle inference configuration in the Model Zoo's shape: load, reorient, resample, scale;
    a sliding window; softmax, invert to the input's space, argmax, save."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'", "dataset_dir": "/data",
        "device": "$torch.device('cpu')",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(@dataset_dir + '/*.nii.gz'))]",
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg", "separate_folder": False, "resample": False},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader", "network": "@network",
                      "inferer": "@inferer", "postprocessing": "@postprocessing", "val_handlers": "@handlers"},
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }


def write_bundle(folder: Path) -> Path:
    """The bundle, with seeded random weights saved as the Model Zoo saves them (a state dict)."""
    import torch
    from monai.networks.nets import SegResNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(inference_config(), indent=1))
    (folder / "configs" / "metadata.json").write_text(json.dumps({
        "name": "tiny_hippocampus_segresnet", "version": "0.1.0", "license": "Apache-2.0 (test)", "task": "hippocampus segmentation",
        "network_data_format": {"inputs": {"image": {"type": "image", "num_channels": 1}},
                                "outputs": {"pred": {"type": "image", "num_channels": 3, "channel_def": LABELS}}},
    }))
    torch.manual_seed(0)
    network = SegResNet(spatial_dims=3, in_channels=1, out_channels=3, init_filters=8, blocks_down=[1, 1], blocks_up=[1])
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder


@pytest.fixture
def bundle(tmp_path):
    require_peer("monai")
    return write_bundle(tmp_path / "tiny_bundle")


def test_a_bundle_predicts_what_monai_bundle_run_writes(bundle, shared_data, tmp_path):
    volume = sorted((shared_data / "mr3d-hippocampus-msd-train" / "imagesTr").glob("*.nii.gz"))[0]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(volume, inputs / "case.nii.gz")
    reference_dir = tmp_path / "monai_out"
    ran = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"), "--meta_file", str(bundle / "configs" / "metadata.json"),
         "--bundle_root", str(bundle), "--dataset_dir", str(inputs), "--output_dir", str(reference_dir)],
        capture_output=True, text=True, timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    reference = read_image(next(reference_dir.rglob("*.nii.gz")))

    described = run_cli("describe", bundle, check=True)
    assert "monai_bundle" in described.stdout and "anterior" in described.stdout
    run_cli("predict", "-i", inputs / "case.nii.gz", "-o", tmp_path / "out", "-m", bundle, check=True)
    predicted = read_image(tmp_path / "out" / "case.nii.gz")
    assert predicted.spatial_shape == read_image(volume).spatial_shape == reference.spatial_shape
    assert predicted.geometry_differences(reference) == []
    assert len(np.unique(predicted.array)) >= 2, "the random bundle predicts one label only: the comparison would be weak"
    assert np.array_equal(predicted.array, reference.array)
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert entry["status"] == "done" and entry["folds"] == ["bundle"] and "monai_bundle tiny_hippocampus_segresnet 0.1.0" in entry["model_name"]


def test_a_bundle_writes_a_dicom_seg_with_its_label_names(bundle, shared_data, tmp_path):
    from pydicom import dcmread

    from tests.e2e.test_hospital_inference import series

    source = series(shared_data, "siemens")
    result = run_cli("predict", "-i", source, "-o", tmp_path / "out", "-m", bundle, "--format", "dicom-seg", check=True)
    segs = list((tmp_path / "out").rglob("*.dcm"))
    assert len(segs) == 1, result.stdout
    seg = dcmread(segs[0])
    assert {s.SegmentLabel for s in seg.SegmentSequence} <= {"anterior", "posterior"} and len(seg.SegmentSequence) >= 1
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dcmread(sorted(source.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID


def test_broken_bundles_are_refused_by_name(bundle, tmp_path):
    image = tmp_path / "image.nii.gz"
    from medseg.io import MedicalImage, write_image

    write_image(MedicalImage(np.random.default_rng(0).random((1, 20, 24, 28)).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), image)

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    refused = run_cli("predict", "-i", image, "-o", tmp_path / "out1", "-m", bundle)
    assert refused.returncode != 0 and "metadata.json: network_data_format.outputs.pred.channel_def is missing" in " ".join(refused.stderr.split())

    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = LABELS
    (bundle / "configs" / "metadata.json").write_text(json.dumps(metadata))
    import torch

    states = torch.load(bundle / "models" / "model.pt", weights_only=True)
    states = {key: value[:1] if value.ndim else value for key, value in states.items()}
    torch.save(states, bundle / "models" / "model.pt")
    refused = run_cli("predict", "-i", image, "-o", tmp_path / "out2", "-m", bundle)
    assert refused.returncode != 0 and "model.pt: does not fit the bundle's network_def" in " ".join(refused.stderr.split())

    (bundle / "models" / "model.pt").write_bytes(b"not a checkpoint")
    refused = run_cli("predict", "-i", image, "-o", tmp_path / "out3", "-m", bundle)
    assert refused.returncode != 0 and "model.pt: not a PyTorch state dict" in " ".join(refused.stderr.split())
    assert not any((tmp_path / "out3").glob("*.nii.gz"))
