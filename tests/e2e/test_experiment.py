"""One Experiment per run: `plan-and-train` parses dataset.json and the plans once each, however
many folds it trains (each stage takes the objects the run built, not names to look up again), and
reads each raw image once before training (the check's pass gives the fingerprint its analyses and
the preprocessing its cropped cases); the budget split and the plans-name rule live in
medseg.experiment."""

from __future__ import annotations

import pathlib
from collections import Counter

import pytest

from medseg.errors import MedsegError
from medseg.experiment import Experiment, TrainingBudget
from tests.conftest import BRIGHT_DATASET, build_bright_dataset


def test_a_five_fold_plan_and_train_parses_dataset_json_and_the_plans_once(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from medseg.cli import app

    root = tmp_path / "root"
    build_bright_dataset(root / "raw" / BRIGHT_DATASET, cases=5)
    monkeypatch.setenv("MEDSEG_ROOT", str(root))
    reads: Counter = Counter()
    read_text = pathlib.Path.read_text

    def counted(path, *args, **kwargs):
        name = path.name
        if name == "dataset.json" or (name.startswith("medsegPlans") and name.endswith(".json")) or name == "plans.json":
            reads["plans" if name != "dataset.json" else "dataset.json"] += 1
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", counted)
    import medseg.data.cases
    import medseg.io

    images: Counter = Counter()
    read_image = medseg.io.read_image

    def counted_image(path, *args, **kwargs):
        if pathlib.Path(path).parent.name == "imagesTr":
            images[pathlib.Path(path).name] += 1
        return read_image(path, *args, **kwargs)

    for module in (medseg.io, medseg.data.cases):
        monkeypatch.setattr(module, "read_image", counted_image)
    command = ["plan-and-train", "--dataset", BRIGHT_DATASET, "--folds", "0,1,2,3,4", "--epochs", "1", "--iterations-per-epoch", "1", "--workers", "1"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "cross-validation" in result.output
    assert (reads["dataset.json"], reads["plans"]) == (1, 0), reads  # the plans were made in this run: never read back
    # the check's pass gives the fingerprint what it read and the preprocessing the cropped cases
    assert len(images) == 5 and set(images.values()) == {1}, images
    assert not (root / "preprocessed" / BRIGHT_DATASET / "cropped").exists()  # the hand-off is removed once used
    reads.clear()
    again = CliRunner().invoke(app, command)  # resumed: every fold already trained, the plans reused
    assert again.exit_code == 0 and again.output.count("already trained") == 5, again.output
    assert (reads["dataset.json"], reads["plans"]) == (1, 1), reads


def test_the_budget_split():
    total = TrainingBudget(total_minutes=10)
    assert total.run_minutes(5) == 2 and total.run_minutes(2) == 5 and total.planned_run_seconds(5) == 120
    # the total covers the final validations: what is spent is taken off, each run stops its overhead early
    assert total.run_minutes(4, spent_minutes=3, run_overhead_minutes=0.5) == 1.25
    assert total.run_minutes(1, spent_minutes=8, run_overhead_minutes=1.8) == 0.5  # a quarter of what is left at least
    assert total.run_minutes(2, spent_minutes=12, run_overhead_minutes=1) == 0.1  # overrun: 1% of the total
    per_run = TrainingBudget(per_run_minutes=3)
    assert per_run.run_minutes(5) == per_run.run_minutes(1) == per_run.run_minutes(1, spent_minutes=30, run_overhead_minutes=2) == 3
    assert TrainingBudget().run_minutes(3) is None and TrainingBudget().planned_run_seconds(3) is None
    with pytest.raises(MedsegError, match="not both"):
        TrainingBudget(total_minutes=10, per_run_minutes=3)


def test_the_plans_name_rule_and_a_mismatched_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_ROOT", str(tmp_path / "root"))
    raw = tmp_path / "root" / "raw" / BRIGHT_DATASET
    build_bright_dataset(raw, cases=2)
    assert Experiment.open(raw).plans_name == "medsegPlans"
    assert Experiment.open(raw, "umamba_bot").plans_name == "medsegPlans_umamba_bot"
    assert Experiment.open(raw, "unet", plans_name="mine").plans_file.name == "mine.json"
    with pytest.raises(MedsegError, match="model 'vit' is trained by the classification task.*segmentation dataset"):
        Experiment.open(raw, "vit")


def test_the_fingerprint_from_the_check_pass_equals_the_one_read_again(tmp_path):
    from dataclasses import asdict

    from medseg.data.check import check_dataset
    from medseg.tasks.segmentation.planning.fingerprint import extract_fingerprint

    raw = tmp_path / BRIGHT_DATASET
    build_bright_dataset(raw, cases=3)
    report = check_dataset(raw, workers=1, fingerprint=True)
    assert report.ok() and sorted(report.analyses) == ["case_000", "case_001", "case_002"]
    from_check = extract_fingerprint(report.description, workers=1, analyses=report.analyses)
    read_again = extract_fingerprint(report.description, workers=1)
    assert asdict(from_check) == asdict(read_again)
    assert check_dataset(raw, workers=1).analyses == {}  # only when asked for


def test_preprocessing_from_the_cases_the_check_kept_equals_reading_them_again(tmp_path):
    """The check keeps each case cropped; preprocessing takes it from there and gives the arrays
    and properties that reading the raw files gives, and reads the files again when one changed."""
    import os

    import numpy as np

    from medseg.data.builder import RawDatasetBuilder
    from medseg.data.check import check_dataset
    from medseg.data.layout import list_cases
    from medseg.io import MedicalImage
    from medseg.tasks.segmentation.planning.fingerprint import extract_fingerprint
    from medseg.planning.budget import Budget
    from medseg.tasks.segmentation.planning.planner import plan_experiment
    from medseg.tasks.segmentation.preprocessing.cropping import load_cropped_case
    from medseg.tasks.segmentation.preprocessing.dataset import load_preprocessed_case, preprocess_dataset

    raw = tmp_path / "Dataset321_Padded"
    rng = np.random.default_rng(3)
    with RawDatasetBuilder(raw, ".nii.gz") as builder:  # zero borders and a hole to crop; the coarse axis last, to transpose
        for index in range(3):
            image = np.zeros((14, 30, 9), np.float32)
            image[2:12, 3 + index : 26, 1:8] = rng.uniform(50, 150, (10, 23 - index, 7))
            image[5:7, 10:12, 3:5] = 0
            label = (image > 120).astype(np.uint8)
            geometry = ((1.2, 1.0, 4.5), (0.0, 0.0, 0.0), np.eye(3))
            builder.add_image(f"case_{index}", MedicalImage(image[None], *geometry))
            builder.add_label(f"case_{index}", MedicalImage(label[None], *geometry))
        builder.finish({"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1}, "numTraining": 3, "file_ending": ".nii.gz"})
    kept = tmp_path / "cropped"
    report = check_dataset(raw, workers=1, fingerprint=True, keep_cropped=kept)
    fingerprint = extract_fingerprint(report.description, workers=1, analyses=report.analyses)
    plans = plan_experiment(fingerprint, report.description, Budget("memory", memory_gb=1))
    assert plans.transpose_forward != [0, 1, 2]
    configuration = plans.configuration("3d_fullres")
    cases, _ = list_cases(report.description, "Tr")
    assert all(load_cropped_case(kept, case) is not None for case in cases)
    preprocess_dataset(report.description, plans, configuration, tmp_path / "from_check", workers=1, cropped_folder=kept)
    preprocess_dataset(report.description, plans, configuration, tmp_path / "from_raw", workers=1)
    for case in cases:
        data, seg, properties = load_preprocessed_case(tmp_path / "from_check", case.case_id, mmap=False)
        data_raw, seg_raw, properties_raw = load_preprocessed_case(tmp_path / "from_raw", case.case_id, mmap=False)
        assert np.array_equal(data, data_raw) and np.array_equal(seg, seg_raw) and properties == properties_raw
        assert properties["shape_after_crop"] != properties["shape_before_crop"]
    touched = cases[0].images[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert load_cropped_case(kept, cases[0]) is None and load_cropped_case(kept, cases[1]) is not None
