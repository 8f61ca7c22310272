"""The extension point: a task and a model family from a plug-in module outside the package
(examples/plugins/toy_regression.py) run through the real CLI with medseg's own loop: planning,
preprocessing, training with a time budget, checkpoints and --continue, prediction,
cross-validation. Plus the registries' rules and their errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.errors import MedsegError
from tests.conftest import REPO, installed_plugin, run_cli

PLUGIN_DIR = REPO / "examples" / "plugins"
DATASET = "Dataset901_AbdomenMRI-demo"
PLANS = "medsegPlans_toy_regressor"


@pytest.fixture(scope="module")
def plugin_env():
    """The plug-in found through $MEDSEG_PLUGINS, with its folder on the path (as a lab would install it)."""
    with installed_plugin(PLUGIN_DIR, "toy_regression"):
        yield


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory, plugin_env) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    run_cli("datasets", "synth", "AbdomenMRI-demo", "--num-cases", "6", root=root, check=True)
    run_cli("fingerprint", "AbdomenMRI-demo", "--workers", "1", root=root, check=True)
    return root


def test_plugin_is_listed_and_found_by_option_too(toy_root):
    tasks = run_cli("tasks", root=toy_root, check=True).stdout
    assert "toy_regression" in tasks and "toy_regressor" in tasks and "segmentation" in tasks
    env = {k: v for k, v in os.environ.items() if k != "MEDSEG_PLUGINS"}
    command = [sys.executable, "-m", "medseg.cli"]
    without = subprocess.run([*command, "models"], capture_output=True, text=True, env=dict(env, COLUMNS="200"))
    assert "toy_regressor" not in without.stdout
    with_option = subprocess.run([*command, "--plugin", "toy_regression", "models"], capture_output=True, text=True, env=dict(env, COLUMNS="200"))
    assert with_option.returncode == 0 and "toy_regressor" in with_option.stdout
    broken = subprocess.run([*command, "--plugin", "no_such_plugin_module", "models"], capture_output=True, text=True, env=env)
    assert broken.returncode == 1 and "no_such_plugin_module" in broken.stderr and "failed to import" in broken.stderr


def test_plugin_task_trains_continues_and_predicts_through_the_cli(toy_root, tmp_path):
    run_cli("plan", "AbdomenMRI-demo", "--model", "toy_regressor", root=toy_root, check=True)
    plans = json.loads((toy_root / "preprocessed" / DATASET / f"{PLANS}.json").read_text())
    assert plans["configurations"]["3d"]["architecture"]["name"] == "toy_regressor"
    run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d", "--plans-name", PLANS, root=toy_root, check=True)

    train = ("train", "AbdomenMRI-demo", "3d", "0", "--plans-name", PLANS, "--iterations-per-epoch", "3")
    first = run_cli(*train, "--epochs", "2", "--no-validate", root=toy_root, check=True)
    assert "training toy_regression (toy_regressor)" in first.stdout and "neg_rmse" in first.stdout
    folder = toy_root / "results" / DATASET / f"toy_regressor__{PLANS}__3d"
    fold = folder / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.json", "progress.png"):
        assert (fold / name).is_file(), name
    info = json.loads((folder / "model.json").read_text())
    assert info["task"] == "toy_regression" and info["model"] == "toy_regressor"

    resumed = run_cli(*train, "--epochs", "4", "--continue", root=toy_root, check=True)
    assert "resumed from checkpoint_latest.pt: epoch 2/" in resumed.stdout and "RMSE" in resumed.stdout
    log = json.loads((fold / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4] and all("rmse" in e for e in log["epochs"])
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["num_cases"] >= 1 and summary["rmse"] is not None

    budget = run_cli("train", "AbdomenMRI-demo", "3d", "1", "--plans-name", PLANS, "--time-budget", "0.05", "--no-validate", root=toy_root, check=True)
    assert "time budget 3 s" in budget.stdout

    inputs = tmp_path / "in"
    inputs.mkdir()
    raw = toy_root / "raw" / DATASET
    for case in ("demo_000", "demo_001"):
        (inputs / f"{case}_0000.nii.gz").write_bytes((raw / "imagesTr" / f"{case}_0000.nii.gz").read_bytes())
    out = tmp_path / "out"
    run_cli("predict", "-i", inputs, "-o", out, "-m", folder, "--folds", "0", root=toy_root, check=True)
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case"] for r in rows] == ["demo_000", "demo_001"] and all(0.0 <= float(r["foreground_fraction"]) + 1.0 for r in rows)


def test_plugin_task_runs_plan_and_train(toy_root):
    result = run_cli(
        "plan-and-train", "--dataset", "AbdomenMRI-demo", "--model", "toy_regressor", "--folds", "2,3", "--epochs", "1",
        "--iterations-per-epoch", "2", root=toy_root, check=True,
    )
    assert "3d cross-validation" in result.stdout and "RMSE" in result.stdout
    report = json.loads((toy_root / "results" / DATASET / f"toy_regressor__{PLANS}__3d" / "crossval_summary.json").read_text())
    assert report["folds"] == ["2", "3"] and report["num_cases"] >= 2


def test_family_and_dataset_layout_must_match():
    from medseg.tasks.registry import task_for_dataset, task_for_model

    with pytest.raises(MedsegError, match="model 'unet' is trained by the segmentation task.*classification dataset"):
        task_for_model("unet", "classification", "Dataset004_ChestXray14")
    with pytest.raises(MedsegError, match="model 'vit' is trained by the classification task.*segmentation dataset"):
        task_for_model("vit", "segmentation", "Dataset001_AbdomenMRI")
    assert task_for_dataset("classification").name == "classification"
    with pytest.raises(MedsegError, match="no registered task learns from it"):
        task_for_dataset("regression", "Dataset009_Ages")
    with pytest.raises(MedsegError, match="unknown model 'nope'.*registered: .*unet"):
        task_for_model("nope")


def test_registry_rules():
    from medseg.registry import Registry

    registry: Registry[int] = Registry("widget", casefold=True)
    registry.register("Alpha", 1)
    registry.register("beta", 2)
    assert registry.get("ALPHA") == 1 and registry.names() == ["alpha", "beta"] and "Beta" in registry
    with pytest.raises(ValueError, match="widget 'alpha' is registered twice"):
        registry.register("alpha", 3)
    with pytest.raises(MedsegError, match="unknown widget 'gamma' \\(registered: alpha, beta\\)"):
        registry.get("gamma")


@pytest.mark.parametrize(("folder", "installed"), [("kernels", "medseg_kernels"), ("datasets", "medseg_datasets"), ("plans", "medseg_plans")])
def test_repository_folders_name_their_import(folder, installed):
    result = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "ImportError: medseg's" in result.stderr and f"use `import {installed}`" in result.stderr


@pytest.mark.slow
def test_plugin_trains_under_torchrun(toy_root):
    """torchrun's workers find the plug-in through the environment the CLI passes on."""
    run_cli("plan", "AbdomenMRI-demo", "--model", "toy_regressor", root=toy_root, check=True)
    run_cli("preprocess", "AbdomenMRI-demo", "-c", "3d", "--plans-name", PLANS, root=toy_root, check=True)
    env = {k: v for k, v in os.environ.items() if k != "MEDSEG_PLUGINS"}
    env.update(MEDSEG_ROOT=str(toy_root), OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medseg.cli", "--plugin", "toy_regression", "train", "AbdomenMRI-demo", "3d", "4", "--plans-name", PLANS,
        "--epochs", "2", "--iterations-per-epoch", "2", "--no-validate",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "2 process(es)" in result.stdout and "training toy_regression" in result.stdout
    assert (toy_root / "results" / DATASET / f"toy_regressor__{PLANS}__3d" / "fold_4" / "checkpoint_final.pt").is_file()


def test_plugin_found_through_an_installed_entry_point(tmp_path):
    """A package that declares `[project.entry-points."medseg.plugins"]` is loaded without any option."""
    dist = tmp_path / "mylab_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[medseg.plugins]\ntoy = toy_regression\n")
    env = {k: v for k, v in os.environ.items() if k != "MEDSEG_PLUGINS"}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(PLUGIN_DIR)]), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "medseg.cli", "tasks"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "toy_regression" in result.stdout, result.stderr
