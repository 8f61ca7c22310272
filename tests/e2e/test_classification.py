"""The classification task: metrics (against MONAI), grouped and stratified folds, and the whole
CLI path (plan-and-train, predict, evaluate) on tiny synthetic images and on the real NIH ChestX-ray14 set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.errors import MedsegError
from medseg.evaluation.classification import binary_metrics, classification_report, roc_auc, roc_curve, youden_threshold
from medseg.training.splits import check_groups, make_splits
from tests.conftest import require_peer, run_cli

TINY_VIT = "vit[width=32,depth=2,heads=2]"
PLANS = "medsegPlans_vit-depth-2-heads-2-width-32"


def test_auc_equals_monai_with_ties():
    require_peer("monai")
    import torch
    from monai.metrics import compute_roc_auc

    rng = np.random.default_rng(0)
    for _ in range(5):
        positives = rng.random(200) < 0.3
        scores = np.round(rng.random(200) + positives * 0.4, 1)  # rounded: many ties
        theirs = float(compute_roc_auc(torch.tensor(scores), torch.tensor(positives.astype(float))))
        assert roc_auc(scores, positives) == pytest.approx(theirs, abs=1e-9)
    assert roc_auc(np.array([0.2, 0.4]), np.array([False, False])) is None


def test_threshold_and_binary_metrics():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    positives = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    fpr, tpr, thresholds = roc_curve(scores, positives)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1 and thresholds[1] == 0.9
    threshold = youden_threshold(scores, positives)
    assert threshold == 0.7  # sens 2/3, spec 1: J = 2/3; 0.3 ties (sens 1, spec 2/3): the higher threshold wins ties
    metrics = binary_metrics(scores >= threshold, positives)
    assert metrics["sensitivity"] == pytest.approx(2 / 3) and metrics["specificity"] == 1.0
    assert metrics["f1"] == pytest.approx(0.8) and metrics["balanced_accuracy"] == pytest.approx(5 / 6)
    report = classification_report(np.stack([scores, 1 - scores], 1), np.stack([positives, positives], 1).astype(int), ["a", "b"], True)
    assert report["per_class"]["a"]["auc"] == pytest.approx(8 / 9) and report["per_class"]["b"]["auc"] == pytest.approx(1 / 9)
    multi = classification_report(np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), np.array([0, 1, 1]), ["a", "b"], False)
    assert multi["accuracy"] == pytest.approx(2 / 3) and multi["mean"]["balanced_accuracy"] == pytest.approx(0.75)


def test_grouped_stratified_splits():
    cases = [f"c{i:03d}" for i in range(60)]
    groups = {case: f"patient{i // 3}" for i, case in enumerate(cases)}  # 3 images per patient
    strata = {case: ("rare" if i < 6 else "common") for i, case in enumerate(cases)}  # 2 patients with the rare class
    splits = make_splits(cases, num_folds=5, groups=groups, strata=strata)
    assert sorted(c for s in splits for c in s["val"]) == cases
    for split in splits:
        assert {groups[c] for c in split["val"]}.isdisjoint({groups[c] for c in split["train"]})
        assert len(split["val"]) == 12
    assert sorted(sum(strata[c] == "rare" for c in s["val"]) for s in splits) == [0, 0, 0, 3, 3]  # the two rare patients apart
    assert make_splits(cases) == make_splits(cases, groups=None)  # segmentation's splits are unchanged
    leaky = [{"train": cases[1:], "val": cases[:1]}]
    with pytest.raises(MedsegError, match="patient0 in both train and val"):
        check_groups(leaky, groups, Path("splits_final.json"))


def _synthetic_dataset(folder: Path, multi_label: bool = True, num_train: int = 40, num_test: int = 10) -> None:
    """32x32 grayscale images: a bright square (class 'square') and/or a dark stripe (class 'stripe')."""
    rng = np.random.default_rng(3)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "imagesTs").mkdir()
    classes = ["square", "stripe"] if multi_label else ["none", "square", "stripe"]
    for split, count in (("Tr", num_train), ("Ts", num_test)):
        rows = []
        for index in range(count):
            case = f"img{split}{index:03d}"
            square, stripe = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if multi_label else ((index % 3) == 1, (index % 3) == 2)
            image = rng.normal(100, 15, (32, 32))
            if square:
                y, x = rng.integers(2, 20, size=2)
                image[y : y + 10, x : x + 10] += 90
            if stripe:
                row = rng.integers(4, 26)
                image[row : row + 3] -= 80
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"images{split}" / f"{case}_0000.png")
            group = f"p{index // 2}"
            rows.append([case, group, int(square), int(stripe)] if multi_label else [case, group, classes[index % 3]])
        with open(folder / f"labels{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "group", *classes] if multi_label else ["case", "group", "label"])
            writer.writerows(rows)
    (folder / "dataset.json").write_text(json.dumps({
        "name": folder.name, "task": "classification", "classes": classes, "multi_label": multi_label,
        "channel_names": {"0": "X-ray"}, "numTraining": num_train, "file_ending": ".png",
    }))


def test_classification_plan_train_predict_evaluate(tmp_path):
    root = tmp_path / "root"
    raw = root / "raw" / "Dataset061_Shapes"
    _synthetic_dataset(raw)
    result = run_cli(
        "plan-and-train", "--dataset", "Dataset061_Shapes", "--model", TINY_VIT, "--folds", "0,1", "--epochs", "4",
        "--iterations-per-epoch", "15", root=root, check=True,
    )
    assert "2d cross-validation" in result.stdout and "AUC" in result.stdout and "balanced acc" in result.stdout
    plans = json.loads((root / "preprocessed" / "Dataset061_Shapes" / f"{PLANS}.json").read_text())
    configuration = plans["configurations"]["2d"]
    assert configuration["patch_size"] == [32, 32] and configuration["architecture"]["kwargs"]["patch"] == 8
    assert configuration["augmentation"]["mirror_axes"] == [] and configuration["training"]["loss"] == "bce"
    splits = json.loads((root / "preprocessed" / "Dataset061_Shapes" / "splits_final.json").read_text())
    for split in splits:  # a patient's two images stay in one fold
        assert {c[-3:] for c in split["val"]} and {int(c[-3:]) // 2 for c in split["val"]}.isdisjoint({int(c[-3:]) // 2 for c in split["train"]})
    folder = root / "results" / "Dataset061_Shapes" / f"vit__{PLANS}__2d"
    report = json.loads((folder / "crossval_summary.json").read_text())
    assert report["num_cases"] == len(splits[0]["val"]) + len(splits[1]["val"])
    assert report["mean"]["auc"] > 0.75, report["mean"]  # the shapes are easy: it must have learned something
    thresholds = json.loads((folder / "thresholds.json").read_text())["thresholds"]
    assert set(thresholds) == {"square", "stripe"} and (folder / "roc.png").stat().st_size > 1000
    assert json.loads((folder / "model.json").read_text())["task"] == "classification"
    # calibration: a temperature per class for both the plain and the test-time-view predictions
    calibration = json.loads((folder / "probability_calibration.json").read_text())
    assert calibration["kind"] == "temperature" and len(calibration["temperature"]["plain"]) == 2 and len(calibration["temperature"]["tta"]) == 2
    assert calibration["tta"]["used"] == (calibration["tta"]["auc_tta"] > calibration["tta"]["auc_plain"]) and calibration["tta"]["views"] == 6
    assert (folder / "fold_1" / "validation" / "predictions_tta.csv").is_file()
    assert report["patients"]["patients"] == report["num_cases"] // 2  # two images per patient
    assert "patients (mean of their images)" in result.stdout and "calibration: temperature" in result.stdout
    described = run_cli("describe", folder, root=root, check=True)
    assert "calibration: temperature" in described.stdout and "test-time augmentation (6 views)" in described.stdout
    recalibrated = run_cli("calibrate", folder, root=root, check=True)
    assert "probability_calibration.json" in recalibrated.stdout
    assert json.loads((folder / "probability_calibration.json").read_text())["temperature"] == calibration["temperature"]

    out = tmp_path / "predictions"
    (raw / "imagesTs" / "broken_0000.png").write_bytes(b"not a png")
    predicted = run_cli("predict", "-i", raw / "imagesTs", "-o", out, "-m", folder, root=root)
    assert predicted.returncode == 1 and "broken" in predicted.stderr + predicted.stdout  # one bad image, the rest written
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and set(rows[0]) == {"case", "square", "stripe", "predicted", "review"}
    assert all(row["review"] == "" for row in rows)  # images like the training ones: no input check fires
    assert all(0 <= float(row["square"]) <= 1 for row in rows)
    for row in rows:  # decisions follow the cross-validation thresholds
        assert ("square" in row["predicted"].split("|")) == (float(row["square"]) >= thresholds["square"])
    scored = run_cli("evaluate", out / "predictions.csv", raw / "labelsTs.csv", "-j", raw / "dataset.json", root=root, check=True)
    assert "AUC" in scored.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_cases"] == 10 and summary["mean"]["auc"] is not None
    assert summary["patients"]["patients"] == 5 and summary["patients"]["max"]["mean"]["auc"] is not None

    # input checks: a PNG at a tenth of the training size is flagged (warn) or refused, naming the field of view
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.fromarray(np.full((3, 3), 90, np.uint8)).save(odd / "tiny_0000.png")
    Image.fromarray(np.random.default_rng(1).integers(60, 160, (32, 32), dtype=np.uint8)).save(odd / "usual_0000.png")
    run_cli("predict", "-i", odd, "-o", tmp_path / "odd_out", "-m", folder, root=root, check=True)
    with open(tmp_path / "odd_out" / "predictions.csv") as handle:
        reviews = {row["case"]: row["review"] for row in csv.DictReader(handle)}
    assert "field of view 3 mm" in reviews["tiny"] and reviews["usual"] == ""
    refused = run_cli("predict", "-i", odd, "-o", tmp_path / "odd_refused", "-m", folder, "--qc", "refuse", root=root)
    assert refused.returncode == 1 and "tiny: refused by the input checks" in " ".join(refused.stderr.split())
    with open(tmp_path / "odd_refused" / "predictions.csv") as handle:
        assert [row["case"] for row in csv.DictReader(handle)] == ["usual"]  # the other case is written

    # transfer: another dataset naming one of the model's classes (multi-class, another case of letters)
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset.json").write_text(json.dumps({
        "name": "Other", "task": "classification", "classes": ["normal", "Stripe"], "multi_label": False,
        "channel_names": {"0": "X-ray"}, "numTraining": 0, "file_ending": ".png",
    }))
    with open(raw / "labelsTs.csv") as handle, open(other / "labels.csv", "w", newline="") as written:
        writer = csv.writer(written)
        writer.writerow(["case", "label"])
        writer.writerows([row["case"], "Stripe" if row["stripe"] == "1" else "normal"] for row in csv.DictReader(handle))
    moved = run_cli("evaluate", out / "predictions.csv", other / "labels.csv", "-j", other / "dataset.json", "-o", other / "summary.json", root=root, check=True)
    assert "scored on the classes both name (Stripe)" in " ".join(moved.stdout.split())
    transfer = json.loads((other / "summary.json").read_text())
    assert list(transfer["per_class"]) == ["Stripe"] and transfer["transfer"]["model_classes_ignored"] == 1
    assert transfer["per_class"]["Stripe"]["auc"] == pytest.approx(summary["per_class"]["stripe"]["auc"])  # the same images and labels
    (other / "dataset.json").write_text((other / "dataset.json").read_text().replace('"Stripe"', '"cat"'))
    (other / "labels.csv").write_text((other / "labels.csv").read_text().replace("Stripe", "cat"))
    unrelated = run_cli("evaluate", out / "predictions.csv", other / "labels.csv", "-j", other / "dataset.json", root=root)
    assert unrelated.returncode == 1 and "share no name" in " ".join(unrelated.stderr.split())

    # predict divides each fold's logits by the plain predictions' temperature (--no-tta: no views)
    def fold0(name: str) -> np.ndarray:
        target = tmp_path / name
        run_cli("predict", "-i", raw / "imagesTs" / "imgTs000_0000.png", "-o", target, "-m", folder, "--folds", "0", "--no-tta", root=root, check=True)
        with open(target / "predictions.csv") as handle:
            return np.array([[float(row[c]) for c in ("square", "stripe")] for row in csv.DictReader(handle)])

    calibrated_plain = fold0("calibrated")
    (folder / "probability_calibration.json").rename(folder / "set_aside.json")
    raw_plain = fold0("uncalibrated")
    (folder / "set_aside.json").rename(folder / "probability_calibration.json")
    from medseg.audit.probability_calibration import calibrated

    assert calibrated_plain == pytest.approx(calibrated(raw_plain, calibration["temperature"]["plain"], True), abs=2e-6)
    refused = run_cli("predict", "-i", raw / "imagesTs", "-o", tmp_path / "axes", "-m", folder, "--tta-axes", "0", root=root)
    assert refused.returncode == 1 and "a classifier takes --tta or --no-tta" in " ".join(refused.stderr.split())

    rows.pop()  # a labelled case without a prediction: no mean over the rest
    with open(out / "partial.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    missing = run_cli("evaluate", out / "partial.csv", raw / "labelsTs.csv", "-j", raw / "dataset.json", root=root)
    assert missing.returncode == 1 and "no prediction for 1 labelled case" in " ".join(missing.stderr.split())


def test_multiclass_classification_trains_with_class_weights(tmp_path):
    root = tmp_path / "root"
    raw = root / "raw" / "Dataset062_ShapeKinds"
    _synthetic_dataset(raw, multi_label=False, num_train=30, num_test=3)
    run_cli("fingerprint", "Dataset062_ShapeKinds", root=root, check=True)
    run_cli("plan", "Dataset062_ShapeKinds", "--model", TINY_VIT, root=root, check=True)
    plans_file = root / "preprocessed" / "Dataset062_ShapeKinds" / f"{PLANS}.json"
    plans = json.loads(plans_file.read_text())
    assert plans["configurations"]["2d"]["training"]["loss"] == "ce"
    plans["configurations"]["2d"]["training"]["class_weights"] = "balanced"
    plans_file.write_text(json.dumps(plans))
    result = run_cli(
        "plan-and-train", "--dataset", "Dataset062_ShapeKinds", "--model", TINY_VIT, "--folds", "0", "--epochs", "1",
        "--iterations-per-epoch", "3", root=root, check=True,
    )
    assert "CE (class-weighted)" in result.stdout and "accuracy" in result.stdout


def test_classification_refuses_bad_images(tmp_path):
    from medseg.tasks.classification import prepare_image

    array = np.zeros((1, 8, 8), np.float32)
    array[0, :3, 0] = np.nan
    with pytest.raises(MedsegError, match="scan.png: 3 pixels are NaN"):
        prepare_image(array, [8, 8], "scan.png")
    root = tmp_path / "root"
    raw = root / "raw" / "Dataset063_Bad"
    _synthetic_dataset(raw, num_train=6, num_test=1)
    (raw / "imagesTr" / "imgTr002_0000.png").write_bytes(b"garbage")
    result = run_cli("fingerprint", "Dataset063_Bad", root=root)
    assert result.returncode == 1 and "imgTr002_0000.png" in result.stderr


def test_chestxray14_real_images_train_and_predict(shared_data, tmp_path):
    """The real NIH-1000 set: converted, grouped by patient, planned at its 64 px, one short fold."""
    root = tmp_path / "root"
    run_cli("datasets", "convert", "ChestXray14", "--src", shared_data / "xray-nih-chestxray14-64px", root=root, check=True)
    result = run_cli(
        "plan-and-train", "--dataset", "ChestXray14", "--model", TINY_VIT, "--folds", "0", "--epochs", "1",
        "--iterations-per-epoch", "3", root=root, check=True,
    )
    assert "Effusion" in result.stdout
    dataset = next((root / "raw").glob("Dataset*_ChestXray14"))
    preprocessed = root / "preprocessed" / dataset.name
    configuration = json.loads((preprocessed / f"{PLANS}.json").read_text())["configurations"]["2d"]
    assert configuration["patch_size"] == [64, 64] and configuration["augmentation"]["mirror_axes"] == []
    with open(dataset / "labelsTr.csv") as handle:
        patient = {row["case"]: row["group"] for row in csv.DictReader(handle)}
    split = json.loads((preprocessed / "splits_final.json").read_text())[0]
    assert {patient[c] for c in split["val"]}.isdisjoint({patient[c] for c in split["train"]})
    folder = root / "results" / dataset.name / f"vit__{PLANS}__2d"
    out = tmp_path / "predictions"
    run_cli("predict", "-i", dataset / "imagesTs", "-o", out, "-m", folder, root=root, check=True)
    with open(out / "predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(list((dataset / "imagesTs").glob("*.png")))
    scored = run_cli("evaluate", out / "predictions.csv", dataset / "labelsTs.csv", "-j", dataset / "dataset.json", root=root, check=True)
    assert "Effusion" in scored.stdout


def test_mae_masks_and_exports_an_encoder_the_vit_loads(tmp_path):
    import torch

    from medseg.models import build_model
    from medseg.models.mae import load_encoder, save_encoder

    settings = {"input_size": [32, 32], "patch": 8, "width": 32, "depth": 2, "heads": 2}
    mae = build_model({"name": "mae_vit", "kwargs": {**settings, "decoder_width": 16, "decoder_depth": 1}}, 1, 1)
    images = torch.randn(3, 1, 32, 32)
    loss, predicted, mask = mae.reconstruct(images, torch.Generator().manual_seed(0))
    assert predicted.shape == (3, 16, 64) and mask.shape == (3, 16) and torch.isfinite(loss)
    assert mask.sum(1).tolist() == [14.0, 14.0, 14.0]  # 90% of 16 patches hidden, 2 seen
    loss.backward()
    assert mae.encoder.patch_embed.weight.grad.abs().sum() > 0
    save_encoder(mae, tmp_path / "encoder.pt")
    vit = build_model({"name": "vit", "kwargs": {**settings, "input_size": [64, 64]}}, 1, 4)  # another input size: positions resized
    load_encoder(vit, tmp_path / "encoder.pt", 1, {**settings, "input_size": [64, 64]})
    assert torch.equal(vit.patch_embed.weight, mae.encoder.patch_embed.weight) and torch.equal(vit.blocks[1].mlp[0].weight, mae.encoder.blocks[1].mlp[0].weight)
    assert vit.pos_embed.shape == (1, 65, 32)
    with pytest.raises(MedsegError, match="width 32 vs 48"):
        load_encoder(build_model({"name": "vit", "kwargs": {**settings, "width": 48}}, 1, 4), tmp_path / "encoder.pt", 1, {**settings, "width": 48})
    with pytest.raises(MedsegError, match="input channels 1 vs 3"):
        load_encoder(build_model({"name": "vit", "kwargs": settings}, 3, 4), tmp_path / "encoder.pt", 3, settings)
    (tmp_path / "other.pt").write_bytes(b"garbage")
    with pytest.raises(MedsegError, match="other.pt"):
        load_encoder(vit, tmp_path / "other.pt", 1, settings)


def test_pretrain_then_fine_tune_from_the_cli(tmp_path):
    root = tmp_path / "root"
    raw = root / "raw" / "Dataset064_Pretrain"
    _synthetic_dataset(raw, num_train=12, num_test=4)
    result = run_cli(
        "pretrain", "--dataset", "Dataset064_Pretrain", "--model", "mae_vit[width=32,depth=2,heads=2,decoder_width=16,decoder_depth=1]",
        "--epochs", "2", "--iterations-per-epoch", "3", "--input-size", "40", root=root, check=True,
    )
    folder = next((root / "results" / "Dataset064_Pretrain").glob("mae_vit__*__2d"))
    assert json.loads((folder / "plans.json").read_text())["configurations"]["2d"]["patch_size"] == [40, 40]  # the side asked for
    encoder = folder / "fold_all" / "encoder.pt"
    assert encoder.is_file() and f"--pretrained {encoder}" in " ".join(result.stdout.split())
    assert (folder / "fold_all" / "reconstructions" / "epoch_0002.png").stat().st_size > 500
    data = next((root / "preprocessed" / "Dataset064_Pretrain").glob("medsegPlans_mae_vit*_2d"))
    assert len(list(data.glob("imagesTs__*.npz"))) == 4 and len(list(data.glob("*.npz"))) == 16  # the test images too
    tuned = run_cli(
        "plan-and-train", "--dataset", "Dataset064_Pretrain", "--model", TINY_VIT, "--folds", "0", "--epochs", "1",
        "--iterations-per-epoch", "2", "--pretrained", encoder, root=root, check=True,
    )
    assert "layer decay 0.75" in tuned.stdout
    wrong = run_cli(
        "plan-and-train", "--dataset", "Dataset064_Pretrain", "--model", "vit[width=48,depth=2,heads=2]", "--folds", "0", "--epochs", "1",
        "--iterations-per-epoch", "2", "--pretrained", encoder, root=root,
    )
    message = " ".join(wrong.stderr.split())
    assert wrong.returncode == 1 and "encoder.pt: the encoder does not fit this model" in message and "width 32 vs 48" in message
    refused = run_cli("predict", "-i", raw / "imagesTs", "-o", tmp_path / "out", "-m", folder, root=root)
    assert refused.returncode == 1 and "--pretrained" in refused.stderr

    # another dataset's pretraining continues from that encoder and learns from extra folders (colour made grayscale)
    other = root / "raw" / "Dataset065_More"
    _synthetic_dataset(other, num_train=6, num_test=0)
    extra = tmp_path / "more_xrays"
    (extra / "nested").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(extra / f"colour{index}.jpg")
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(extra / "nested" / "gray.png")
    spec = "mae_vit[width=32,depth=2,heads=2,decoder_width=16,decoder_depth=1]"
    continued = run_cli(
        "pretrain", "--dataset", "Dataset065_More", "--model", spec, "--images", extra, "--pretrained", encoder, "--no-test-images",
        "--epochs", "1", "--iterations-per-epoch", "2", root=root, check=True,
    )
    assert f"continuing from the encoder {encoder}" in continued.stdout
    more = next((root / "preprocessed" / "Dataset065_More").glob("medsegPlans_mae_vit*_2d"))
    assert len(list(more.glob("extra__*.npz"))) == 4 and len(list(more.glob("*.npz"))) == 10
    with np.load(next(more.glob("extra__*.npz"))) as content:
        assert content["image"].shape == (1, 32, 32)  # the dataset's one channel, at its input size
    (extra / "broken.png").write_bytes(b"not an image")
    broken = run_cli("pretrain", "--dataset", "Dataset065_More", "--model", spec, "--images", extra, "--no-test-images", "--epochs", "1", root=root)
    assert broken.returncode == 1 and "broken.png" in broken.stderr
    elsewhere = run_cli("pretrain", "--dataset", "Dataset065_More", "--model", spec, "--no-test-images", "--epochs", "1", root=root)
    assert elsewhere.returncode == 1 and "add --replan" in " ".join(elsewhere.stderr.split())  # not silently the planned images
    mismatched = run_cli(
        "pretrain", "--dataset", "Dataset065_More", "--model", "mae_vit[width=48,depth=2,heads=2,decoder_width=16,decoder_depth=1]",
        "--pretrained", encoder, "--no-test-images", "--epochs", "1", "--iterations-per-epoch", "1", root=root,
    )
    assert mismatched.returncode == 1 and "width 32 vs 48" in " ".join(mismatched.stderr.split())


@pytest.mark.parametrize("reach_main", [False, True])
def test_gradient_routing_steps(reach_main):
    """Pass 1 moves only the gates; pass 2 (through the moved gates) everything else, with or
    without pass 1's gradients (the published code keeps them), checked against the steps by hand."""
    import copy

    import torch

    from medseg.models import build_model
    from medseg.models.vit import is_gate_parameter
    from medseg.tasks.classification import GRADIENT_CLIP, ClassificationRun

    torch.manual_seed(0)
    network = build_model({"name": "hag_cnn", "kwargs": {"input_size": [32, 32], "width": 4}}, 1, 2)
    twin = copy.deepcopy(network)
    images, targets = torch.randn(4, 1, 32, 32), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])

    def split(net):
        gates = [p for n, p in net.named_parameters() if is_gate_parameter(n)]
        return gates, [p for n, p in net.named_parameters() if not is_gate_parameter(n)]

    run = ClassificationRun.__new__(ClassificationRun)
    run.multi_label, run.class_weights, run.gate_gradients_reach_main = True, None, reach_main
    gates, main = split(network)
    assert len(gates) == 4  # one gate vector per stage
    run.optimizers = {"network": torch.optim.SGD(main, lr=0.1), "gates": torch.optim.SGD(gates, lr=0.1)}
    run._routed_step(images, targets, network)

    twin_gates, twin_main = split(twin)
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    loss(twin(images), targets).backward()
    first = [p.grad.clone() for p in twin_main]
    with torch.no_grad():
        for p in twin_gates:
            p -= 0.1 * p.grad
    twin.zero_grad()
    loss(twin(images), targets).backward()
    if reach_main:
        for p, g in zip(twin_main, first):
            p.grad += g
    torch.nn.utils.clip_grad_norm_(twin_main, GRADIENT_CLIP)
    with torch.no_grad():
        for p in twin_main:
            p -= 0.1 * p.grad
    for ours, theirs in zip(network.parameters(), twin.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("model", ["hag_cnn[width=8]", "hag_vit[width=32,depth=2,heads=2]", "resnet18[width=8]"])
def test_every_classifier_family_trains_from_the_cli(tmp_path, model):
    root = tmp_path / "root"
    raw = root / "raw" / "Dataset065_Families"
    _synthetic_dataset(raw, num_train=10, num_test=2)
    result = run_cli(
        "plan-and-train", "--dataset", "Dataset065_Families", "--model", model, "--folds", "0", "--epochs", "1",
        "--iterations-per-epoch", "2", root=root, check=True,
    )
    assert ("gradient routing" in result.stdout) == model.startswith("hag_") and "AUC" in result.stdout
    folder = next((root / "results" / "Dataset065_Families").glob(f"{model.split('[')[0]}__*__2d"))
    run_cli("predict", "-i", raw / "imagesTs", "-o", tmp_path / "out", "-m", folder, root=root, check=True)
    assert (tmp_path / "out" / "predictions.csv").is_file()


def test_input_size_is_the_users_side(tmp_path):
    """--input-size fixes a 2D image task's side (the CPU plan then sizes the batch alone); a plan made
    for another side is not reused silently; the segmentation planner, which sizes patches itself,
    refuses it."""
    from tests.e2e.test_gms import DATASET as DISKS, disks_dataset

    root = tmp_path / "root"
    _synthetic_dataset(root / "raw" / "Dataset063_Sides", multi_label=False, num_train=12, num_test=2)
    run_cli("fingerprint", "Dataset063_Sides", root=root, check=True)
    run_cli("plan", "Dataset063_Sides", "--model", TINY_VIT, "--input-size", "50", root=root, check=True)
    plans = json.loads((root / "preprocessed" / "Dataset063_Sides" / f"{PLANS}.json").read_text())
    assert plans["configurations"]["2d"]["patch_size"] == [48, 48] and plans["planner"]["input_size"] == 50  # a multiple of the patch (8)
    refused = run_cli("plan-and-train", "--dataset", "Dataset063_Sides", "--model", TINY_VIT, "--input-size", "64", "--folds", "0", "--epochs", "1", root=root)
    assert refused.returncode != 0 and "was planned without --input-size 64 (input size 50): add --replan" in " ".join(refused.stderr.split())
    too_small = run_cli("plan", "Dataset063_Sides", "--model", TINY_VIT, "--input-size", "16", root=root)
    assert too_small.returncode != 0 and "--input-size 16: vit needs at least 4 x its patch/stride 8 = 32 pixels" in " ".join(too_small.stderr.split())

    disks_dataset(root / "raw" / DISKS, cases=4, side=32)
    run_cli("fingerprint", DISKS, root=root, check=True)
    segmentation = run_cli("plan", DISKS, "--model", "unet", "--input-size", "64", root=root)
    assert segmentation.returncode != 0 and "--input-size is for the 2D image tasks" in " ".join(segmentation.stderr.split())


def test_cpu_plan_narrows_the_cnn_when_the_budget_sees_the_images_too_rarely(tmp_path):
    """At its smallest side (4 x its stride of 32) a ResNet that a budget would show each image only a
    few times is planned at the family's narrower CPU width; a long budget keeps the full width, and a
    width in the model spec is the user's."""
    from medseg.models.resnet import CPU_WIDTHS

    root = tmp_path / "root"
    _synthetic_dataset(root / "raw" / "Dataset066_Widths", multi_label=False, num_train=12, num_test=2)
    run_cli("fingerprint", "Dataset066_Widths", root=root, check=True)

    def planned(model: str, minutes: str) -> dict:
        run_cli("plan", "Dataset066_Widths", "--model", model, "--time-budget", minutes, "--plans-name", "widthPlans", root=root, check=True)
        return json.loads((root / "preprocessed" / "Dataset066_Widths" / "widthPlans.json").read_text())

    short = planned("resnet18", "0.01")  # under a second of training: far fewer than MIN_PASSES passes
    assert short["configurations"]["2d"]["architecture"]["kwargs"]["width"] == CPU_WIDTHS[-1]
    assert [m["width"] for m in short["planner"]["measured"]] == list(CPU_WIDTHS)
    assert all(m["input_size"] == [128, 128] for m in short["planner"]["measured"])
    assert short["planner"]["validation_seconds"] > 0  # a fold's final validation, taken off the first fold's training too
    long = planned("resnet18", "6000")
    assert long["configurations"]["2d"]["architecture"]["kwargs"]["width"] == CPU_WIDTHS[0]
    chosen = planned("resnet18[width=48]", "0.01")
    assert chosen["configurations"]["2d"]["architecture"]["kwargs"]["width"] == 48
    assert [m["width"] for m in chosen["planner"]["measured"]] == [48]
