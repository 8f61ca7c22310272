"""The pipeline end to end through the real CLI on a small synthetic 3D dataset: fingerprint,
plan, preprocess, train (and --continue after a kill, and 2-process DDP), predict, evaluate,
plan-and-train."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.io import read_image
from medseg.model_folder import ModelFolder
from tests.conftest import run_cli

DATASET = "Dataset901_AbdomenMRI-demo"
TINY_TRAIN = ("--epochs", "2", "--iterations-per-epoch", "2")


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "8", root=root, check=True)
    run_cli("fingerprint", "AbdomenMRI-demo", "--workers", "2", root=root, check=True)
    run_cli("plan", "AbdomenMRI-demo", root=root, check=True)
    run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d_fullres", "--workers", "2", root=root, check=True)
    return root


def model_folder(root: Path) -> Path:
    return root / "results" / DATASET / "unet__medsegPlans__3d_fullres"


def test_stage_outputs(prepared_root):
    pre = prepared_root / "preprocessed" / DATASET
    fingerprint = json.loads((pre / "fingerprint.json").read_text())
    assert len(fingerprint["spacings"]) == 8 and fingerprint["spacings"][0] == [6.0, 3.0, 3.0]
    plans = json.loads((pre / "medsegPlans.json").read_text())
    assert plans["version"] == 1 and plans["planner"]["mode"] == "time"
    config = plans["configurations"]["3d_fullres"]
    assert config["architecture"]["name"] == "unet" and config["augmentation"]["mirror_axes"] == [0, 1]  # left/right kidneys
    data = np.load(pre / "medsegPlans_3d_fullres" / "demo_000.npy")
    seg = np.load(pre / "medsegPlans_3d_fullres" / "demo_000_seg.npy")
    assert data.dtype == np.float32 and data.shape[1:] == seg.shape[1:] and set(np.unique(seg)) <= {0, 1, 2, 3, 4}
    again = run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d_fullres", root=prepared_root, check=True).stdout
    assert "0 case(s) preprocessed, 8 already done" in again


def test_replanned_spacing_reprocesses_and_stale_data_are_refused(prepared_root):
    pre = prepared_root / "preprocessed" / DATASET
    run_cli("plan", "AbdomenMRI-demo", "--plans-name", "altPlans", root=prepared_root, check=True)
    run_cli("preprocess", "AbdomenMRI-demo", "-c", "2d", "--plans-name", "altPlans", root=prepared_root, check=True)
    before = np.load(pre / "altPlans_2d" / "demo_000.npy").shape
    plans_file = pre / "altPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"]["spacing"] = [s * 2 for s in plans["configurations"]["2d"]["spacing"]]
    plans_file.write_text(json.dumps(plans))
    refused = run_cli("train", "AbdomenMRI-demo", "2d", "0", *TINY_TRAIN, "--plans-name", "altPlans", root=prepared_root)
    assert refused.returncode == 1 and "preprocessed for a different plan" in refused.stderr
    again = run_cli("preprocess", "AbdomenMRI-demo", "-c", "2d", "--plans-name", "altPlans", root=prepared_root, check=True).stdout
    assert "8 case(s) preprocessed, 0 already done" in again
    after = np.load(pre / "altPlans_2d" / "demo_000.npy").shape
    assert after[1] == before[1] and after[2] == round(before[2] / 2)  # z kept, in-plane halved


@pytest.mark.slow
def test_train_predict_evaluate(prepared_root, tmp_path):
    result = run_cli("train", "AbdomenMRI-demo", "3d_fullres", "0", *TINY_TRAIN, root=prepared_root, check=True)
    assert "foreground mean" in result.stdout
    fold = model_folder(prepared_root) / "fold_0"
    for name in ("checkpoint_final.pt", "checkpoint_latest.pt", "checkpoint_best.pt", "log.json", "progress.png", "validation/summary.json"):
        assert (fold / name).is_file(), name
    for name in ("plans.json", "dataset.json", "model.json"):
        assert (model_folder(prepared_root) / name).is_file(), name
    log = json.loads((fold / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == 2 and set(summary["mean"]) == {"liver", "spleen", "right_kidney", "left_kidney"}

    raw = prepared_root / "raw" / DATASET
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("demo_006", "demo_007"):
        (inputs / f"{case}_0000.nii.gz").write_bytes((raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
    (inputs / "broken_0000.nii.gz").write_bytes(b"not a nifti file")
    out = tmp_path / "out"
    result = run_cli("predict", "-i", inputs, "-o", out, "-m", model_folder(prepared_root), "--no-tta", "--save-probabilities", root=prepared_root)
    assert result.returncode == 1 and "broken" in result.stderr  # the bad case is named, the others written
    prediction = read_image(out / "demo_006.nii.gz")
    original = read_image(raw / "labelsTr" / "demo_006.nii.gz")
    assert not prediction.geometry_differences(original) and prediction.array.shape == original.array.shape
    probabilities = np.load(out / "demo_006.probabilities.npz")["probabilities"]
    assert probabilities.shape == (5, *original.spatial_shape)
    evaluate = ("evaluate", out, raw / "labelsTr", "-j", raw / "dataset.json", "--nsd-tolerance", "3")
    refused = run_cli(*evaluate, root=prepared_root)  # the other references have no prediction: no mean over the rest
    assert refused.returncode == 1 and "6 of 8 case(s) cannot be scored" in refused.stderr and "missing prediction" in refused.stderr
    assert not (out / "summary.json").exists()
    evaluation = run_cli(*evaluate, "--allow-missing", root=prepared_root, check=True)
    assert "foreground mean" in evaluation.stdout and (out / "summary.json").is_file()
    assert "scored as empty" in evaluation.stderr and "demo_000" in evaluation.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 8 and summary["per_case"]["demo_000"]["liver"]["dice"] == 0.0


@pytest.mark.slow
def test_continue_after_kill_mid_epoch(prepared_root):
    args = ["train", "AbdomenMRI-demo", "3d_fullres", "1", "--epochs", "4", "--iterations-per-epoch", "6", "--no-validate"]
    env = dict(os.environ, MEDSEG_ROOT=str(prepared_root))
    fold = model_folder(prepared_root) / "fold_1"
    process = subprocess.Popen([sys.executable, "-m", "medseg.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        log = fold / "log.json"
        if log.is_file() and len(json.loads(log.read_text())["epochs"]) >= 1:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    epochs_done = len(json.loads((fold / "log.json").read_text())["epochs"])
    assert epochs_done < 4 and not (fold / "checkpoint_final.pt").exists()
    result = run_cli(*args, "--continue", root=prepared_root, check=True)
    assert f"resumed from checkpoint_latest.pt: epoch {epochs_done}/4" in result.stdout
    log = json.loads((fold / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4] and (fold / "checkpoint_final.pt").is_file()


@pytest.mark.slow
def test_two_process_ddp_training(prepared_root):
    env = dict(os.environ, MEDSEG_ROOT=str(prepared_root), OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # --standalone: a free port, never a fixed one that may be taken
        "-m", "medseg.cli", "--debug", "train", "AbdomenMRI-demo", "3d_fullres", "2", *TINY_TRAIN, "--no-validate",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    assert (model_folder(prepared_root) / "fold_2" / "checkpoint_final.pt").is_file()


@pytest.mark.slow
def test_plan_and_train_resumes_and_prints_crossval(prepared_root):
    args = ("plan-and-train", "--task", "AbdomenMRI", "--demo", "--folds", "0,3", *TINY_TRAIN)
    result = run_cli(*args, root=prepared_root, check=True)
    assert "3d_fullres cross-validation" in result.stdout and "foreground mean" in result.stdout
    assert (model_folder(prepared_root) / "crossval_summary.json").is_file()
    assert (model_folder(prepared_root) / "postprocessing.json").is_file()
    again = run_cli(*args, root=prepared_root, check=True)
    assert "fold 0: already trained" in again.stdout and "fold 3: already trained" in again.stdout


def test_train_errors_are_clear(prepared_root):
    result = run_cli("train", "AbdomenMRI-demo", "3d_lowres", "0", root=prepared_root)
    assert result.returncode == 1 and "no configuration '3d_lowres'" in result.stderr
    result = run_cli("train", "AbdomenMRI-demo", "3d_fullres", "7", root=prepared_root)
    assert result.returncode == 1 and "fold 7 does not exist" in result.stderr
    result = run_cli("predict", "-i", prepared_root, "-o", prepared_root / "x", "-m", prepared_root, root=prepared_root)
    assert result.returncode == 1 and "neither a medseg model folder" in result.stderr


def test_bad_case_is_named_and_the_rest_is_kept(tmp_path):
    root = tmp_path / "root"
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "3", root=root, check=True)
    run_cli("fingerprint", "AbdomenMRI-demo", root=root, check=True)
    run_cli("plan", "AbdomenMRI-demo", "--memory-gb", "1", root=root, check=True)
    broken = root / "raw" / DATASET / "imagesTr" / "demo_001_0000.nii.gz"
    broken.write_bytes(b"truncated")
    result = run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d_fullres", "--workers", "1", root=root)
    assert result.returncode == 1 and "demo_001_0000.nii.gz" in result.stderr and "rerun to resume" in result.stderr
    done = sorted(p.name for p in (root / "preprocessed" / DATASET / "medsegPlans_3d_fullres").glob("*.json"))
    assert done == ["demo_000.json", "demo_002.json"]
    result = run_cli("fingerprint", "AbdomenMRI-demo", root=root)
    assert result.returncode == 1 and "demo_001_0000.nii.gz" in result.stderr


@pytest.mark.slow
def test_umamba_bot_plans_trains_and_predicts_through_the_cli(prepared_root, tmp_path):
    # another registered family through the same pipeline: its plans (under their own name) carry
    # the Mamba layer's settings, and training and inference run on the selective-scan kernels
    result = run_cli("plan-and-train", "--task", "AbdomenMRI", "--demo", "--model", "umamba_bot", "--folds", "0", *TINY_TRAIN, root=prepared_root, check=True)
    assert "umamba_bot features" in result.stdout and "3d_fullres cross-validation" in result.stdout
    plans = json.loads((prepared_root / "preprocessed" / DATASET / "medsegPlans_umamba_bot.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    assert architecture["name"] == "umamba_bot" and architecture["kwargs"]["mamba_state"] == 16
    folder = prepared_root / "results" / DATASET / "umamba_bot__medsegPlans_umamba_bot__3d_fullres"
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "demo_007_0000.nii.gz").write_bytes((prepared_root / "raw" / DATASET / "imagesTr" / "demo_007_0000.nii.gz").read_bytes())
    run_cli("predict", "-i", inputs, "-o", tmp_path / "out", "-m", folder, "--no-tta", root=prepared_root, check=True)
    prediction = read_image(tmp_path / "out" / "demo_007.nii.gz")
    assert prediction.array.shape == read_image(inputs / "demo_007_0000.nii.gz").array.shape
    # plans of another family under that name are refused, not silently trained as U-Mamba
    run_cli("plan", "AbdomenMRI-demo", "--plans-name", "medsegPlans_umamba_bot", root=prepared_root, check=True)
    refused = run_cli("plan-and-train", "--task", "AbdomenMRI", "--demo", "--model", "umamba_bot", "--folds", "0", *TINY_TRAIN, root=prepared_root)
    assert refused.returncode == 1 and "plans unet, not umamba_bot" in refused.stderr


@pytest.mark.slow
def test_prediction_carries_the_source_metadata(prepared_root, shared_data):
    """A DICOM series' SOP instances travel with its segmentation (for a DICOM SEG writer to reference)."""
    from medseg.io import read_image as read
    from medseg.tasks import PredictorOptions, open_predictor

    image = read(shared_data / "dicom-series-dicom2nifti" / "siemens" / "anatomical" / "001")
    if not (model_folder(prepared_root) / "fold_0" / "checkpoint_final.pt").is_file():
        run_cli("train", "AbdomenMRI-demo", "3d_fullres", "0", *TINY_TRAIN, "--no-validate", root=prepared_root, check=True)
    prediction = open_predictor(model_folder(prepared_root), PredictorOptions(folds=["0"], mirror=False)).predict_image(image, case_id="siemens")
    source = prediction.segmentation.metadata["source"]
    assert source["sop_instance_uids"] == image.metadata["sop_instance_uids"] and len(source["sop_instance_uids"]) == 4
    assert prediction.source == source and not prediction.segmentation.geometry_differences(image)


def test_model_folder_defects_are_named(prepared_root, tmp_path):
    import shutil

    if not (model_folder(prepared_root) / "fold_0" / "checkpoint_final.pt").is_file():
        run_cli("train", "AbdomenMRI-demo", "3d_fullres", "0", *TINY_TRAIN, "--no-validate", root=prepared_root, check=True)
    broken = tmp_path / "model"
    shutil.copytree(model_folder(prepared_root), broken, ignore=shutil.ignore_patterns("validation", "checkpoint_latest.pt", "checkpoint_best.pt"))
    inputs = prepared_root / "raw" / DATASET / "imagesTr" / "demo_000_0000.nii.gz"
    info = json.loads((broken / "model.json").read_text())
    (broken / "model.json").write_text(json.dumps({k: v for k, v in info.items() if k != "configuration"}))
    result = run_cli("predict", "-i", inputs, "-o", tmp_path / "out", "-m", broken, root=prepared_root)
    assert result.returncode == 1 and "model.json lacks configuration" in result.stderr
    (broken / "model.json").write_text(json.dumps(info))
    checkpoint = broken / "fold_0" / "checkpoint_final.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    result = run_cli("predict", "-i", inputs, "-o", tmp_path / "out", "-m", broken, root=prepared_root)
    assert result.returncode == 1 and "checkpoint_final.pt: unreadable checkpoint" in result.stderr


def test_presets_are_listed_and_shape_the_plan(prepared_root):
    listing = run_cli("plans", root=prepared_root, check=True).stdout
    assert all(name in listing for name in ("fast", "cpu", "nnunet"))
    run_cli("plan", "AbdomenMRI-demo", "--preset", "fast", "--plans-name", "fastPlans", root=prepared_root, check=True)
    plans = json.loads((prepared_root / "preprocessed" / DATASET / "fastPlans.json").read_text())
    assert plans["planner"]["preset"] == "fast" and min(plans["configurations"]["3d_fullres"]["spacing"]) >= 3.0
    run_cli("plan", "AbdomenMRI-demo", "--preset", "nnunet", "--plans-name", "nnPlans", root=prepared_root, check=True)
    plans = json.loads((prepared_root / "preprocessed" / DATASET / "nnPlans.json").read_text())
    assert plans["planner"]["mode"] == "memory" and plans["configurations"]["3d_fullres"]["training"]["optimizer"] == "sgd"
    unknown = run_cli("plan", "AbdomenMRI-demo", "--preset", "turbo", root=prepared_root)
    assert unknown.returncode == 1 and "unknown preset 'turbo'" in unknown.stderr and "fast" in unknown.stderr


def test_dataset_and_task_options_name_the_same_thing(prepared_root):
    both = run_cli("plan-and-train", "--dataset", "AbdomenMRI-demo", "--task", "KvasirSEG", root=prepared_root)
    assert both.returncode == 1 and "name different datasets" in both.stderr
    neither = run_cli("plan-and-train", "--epochs", "1", root=prepared_root)
    assert neither.returncode == 1 and "--dataset" in neither.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("family", "setting"), [("umamba_enc", "patch_size"), ("xlstm_unet_bot", "vil_blocks"), ("xlstm_unet_enc", "vil_stages")])
def test_sequence_mixer_families_train_and_predict_through_the_cli(prepared_root, tmp_path, family, setting):
    result = run_cli("plan-and-train", "--task", "AbdomenMRI", "--demo", "--model", family, "--folds", "0", *TINY_TRAIN, root=prepared_root, check=True)
    assert f"{family} features" in result.stdout and "3d_fullres cross-validation" in result.stdout
    plans = json.loads((prepared_root / "preprocessed" / DATASET / f"medsegPlans_{family}.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    assert architecture["name"] == family and setting in architecture["kwargs"]
    folder = prepared_root / "results" / DATASET / f"{family}__medsegPlans_{family}__3d_fullres"
    assert (folder / "crossval_summary.json").is_file()
    image = prepared_root / "raw" / DATASET / "imagesTr" / "demo_007_0000.nii.gz"
    run_cli("predict", "-i", image, "-o", tmp_path / "out", "-m", folder, "--no-tta", root=prepared_root, check=True)
    assert read_image(tmp_path / "out" / "demo_007.nii.gz").array.shape == read_image(image).array.shape


@pytest.mark.slow
def test_compare_trains_families_on_the_same_folds_and_writes_the_table(tmp_path):
    root = tmp_path / "root"
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "6", root=root, check=True)
    refused = run_cli("compare", "--dataset", "AbdomenMRI-demo", "--models", "unet", "--folds", "0", root=root)
    assert refused.returncode == 1 and "same budget" in refused.stderr
    result = run_cli(
        "compare", "--dataset", "AbdomenMRI-demo", "--models", "unet,xlstm_unet_bot[vil_directions=forward, vil_blocks=1]",
        "--folds", "0,1", "--epochs", "1", "--iterations-per-epoch", "2", root=root, check=True,
    )
    folder = root / "results" / DATASET / "compare__3d_fullres"
    comparison = json.loads((folder / "compare.json").read_text())
    variant = "xlstm_unet_bot[vil_blocks=1,vil_directions=forward]"  # a model spec, written canonically
    assert set(comparison["families"]) == {"unet", variant} and comparison["baseline"] == "unet"
    plans = json.loads((root / "preprocessed" / DATASET / "medsegPlans_xlstm_unet_bot-vil_blocks-1-vil_directions-forward.json").read_text())
    assert plans["planner"]["model_options"] == {"vil_blocks": 1, "vil_directions": "forward"}
    splits = json.loads((root / "preprocessed" / DATASET / "splits_final.json").read_text())
    assert comparison["num_cases"] == len(splits[0]["val"]) + len(splits[1]["val"])  # the same held-out cases for both
    bot = comparison["families"][variant]
    # sizes follow each family's measured CPU speed, so check the count against what was trained
    bot_folder = ModelFolder.open(root / "results" / DATASET / "xlstm_unet_bot__medsegPlans_xlstm_unet_bot-vil_blocks-1-vil_directions-forward__3d_fullres")
    trained = sum(t.numel() for t in bot_folder.load_module_states("0")["network"].values() if t.is_floating_point())
    assert bot["iterations"] == 4 and bot["parameters"] == trained != comparison["families"]["unet"]["parameters"]
    assert bot["dice_vs_unet"]["foreground"]["n"] == comparison["num_cases"] and bot["peak_memory_mb"] > 0
    assert f"| {variant} |" in (folder / "compare.md").read_text() and "Δ Dice vs unet" in result.stdout
    assert (folder / "compare.png").stat().st_size > 1000


def test_compare_gives_a_resumed_run_the_same_budget(tmp_path):
    """A run retrained on resume gets the per-run budget, not the budget of all the folds."""
    root = tmp_path / "root"
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "6", root=root, check=True)
    arguments = ("compare", "--dataset", "AbdomenMRI-demo", "--models", "unet", "--folds", "0,1", "--time-budget", "0.05")
    first = run_cli(*arguments, root=root, check=True)
    assert first.stdout.count("time budget 3 s") == 2, first.stdout
    shutil.rmtree(root / "results" / DATASET / "unet__medsegPlans__3d_fullres" / "fold_1")
    again = run_cli(*arguments, root=root, check=True)
    assert "fold 0: already trained" in again.stdout and again.stdout.count("time budget 3 s") == 1, again.stdout
