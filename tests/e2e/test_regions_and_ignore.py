"""Region-based training and the ignore label, nnU-Net's dataset.json conventions: parsed, trained,
validated, predicted and scored through the CLI on small synthetic volumes."""

import json

import numpy as np
import pytest
import torch

from medseg.data.builder import RawDatasetBuilder
from medseg.data.layout import parse_dataset_json, parse_labels
from medseg.errors import DatasetError
from medseg.io import MedicalImage, read_image
from medseg.tasks.segmentation.training.losses import DiceCELoss, RegionDiceBCELoss
from tests.conftest import run_cli

SHAPE = (16, 32, 32)


def _nested_case(rng):
    """A ball (label 1) with a core (label 2): regions 'whole' = {1, 2} and 'core' = {2}."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    centre = rng.integers([6, 12, 12], [10, 20, 20])
    distance = np.sqrt(((zz - centre[0]) * 2.0) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    label = np.where(distance < 4, 2, np.where(distance < 9, 1, 0)).astype(np.uint8)
    image = rng.normal(0, 10, SHAPE) + 100 + 60 * (label >= 1) + 60 * (label == 2)
    return image.astype(np.float32), label


def _dataset(folder, labels: dict, extra: dict, cases: int = 8, ignore_half: bool = False) -> None:
    rng = np.random.default_rng(0)
    geometry = dict(spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    with RawDatasetBuilder(folder, ".nii.gz") as builder:
        for index in range(cases):
            image, label = _nested_case(rng)
            if ignore_half:  # sparse annotation: the right half is unannotated
                label = np.minimum(label, 1)
                label[:, :, SHAPE[2] // 2 :] = labels["ignore"]
            builder.add_image(f"case_{index:03d}", MedicalImage(image[None], **geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(label[None], **geometry))
        builder.finish({"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz", **extra})


def test_dataset_json_regions_and_ignore_label_are_parsed_or_refused(tmp_path):
    labels, regions, ignore = parse_labels({"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 2]}, tmp_path / "d.json")
    assert labels == {"background": 0, "whole": 1, "core": 2} and regions == {"whole": [1, 2], "core": [2]} and ignore is None
    labels, regions, ignore = parse_labels({"labels": {"background": 0, "object": 1, "ignore": 2}}, tmp_path / "d.json")
    assert labels == {"background": 0, "object": 1} and regions is None and ignore == 2
    refused = [
        ({"labels": {"background": 0, "whole": [1, 2], "core": 2}}, "need 'regions_class_order'"),
        ({"labels": {"background": 0, "whole": [1, 2], "core": 2}, "regions_class_order": [1, 1]}, "its own non-zero value"),
        ({"labels": {"background": 0, "object": 2, "ignore": 1}}, "'ignore' label must have the highest value"),
        ({"labels": {"background": 0, "object": 1}, "regions_class_order": [1]}, "no label is a region"),
    ]
    for content, message in refused:
        with pytest.raises(DatasetError, match=message):
            parse_labels(content, tmp_path / "d.json")
    _dataset(tmp_path / "Dataset1_R", {"background": 0, "whole": [1, 2], "core": 2}, {"regions_class_order": [1, 2]}, cases=1)
    description, problems = parse_dataset_json(tmp_path / "Dataset1_R")
    assert not problems and description.label_values == {0, 1, 2}


def test_losses_leave_ignored_voxels_out():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 4, 6, 6))
    target[:, :, :, :, 3:] = 7  # ignored
    loss = DiceCELoss(batch_dice=False, ignore_label=7)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[..., 3:].abs().max() == 0 and logits.grad[..., :3].abs().max() > 0
    region_logits = torch.randn(2, 2, 4, 6, 6, requires_grad=True)
    loss = RegionDiceBCELoss([[1, 2], [2]], batch_dice=True, ignore_label=7)(region_logits, target)
    loss.backward()
    assert torch.isfinite(loss) and region_logits.grad[..., 3:].abs().max() == 0
    everything_ignored = torch.full_like(target, 7)
    assert torch.isfinite(DiceCELoss(batch_dice=True, ignore_label=7)(logits, everything_ignored))


@pytest.mark.slow
def test_region_based_dataset_trains_predicts_and_scores_regions(tmp_path):
    root = tmp_path / "root"
    dataset = "Dataset994_Regions"
    _dataset(root / "raw" / dataset, {"background": 0, "whole": [1, 2], "core": 2}, {"regions_class_order": [1, 2]})
    run_cli("plan-and-train", "--dataset", dataset, "-c", "3d_fullres", "--folds", "0", "--epochs", "3", "--iterations-per-epoch", "10", root=root, check=True)
    plans = json.loads((root / "preprocessed" / dataset / "medsegPlans.json").read_text())
    assert plans["regions"] == {"whole": [1, 2], "core": [2]} and plans["labels"] == {"background": 0, "whole": 1, "core": 2}
    model = root / "results" / dataset / "unet__medsegPlans__3d_fullres"
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"whole", "core"}  # scored per region, on the reference's values

    from medseg.model_folder import ModelFolder

    weights = ModelFolder.open(model).load_module_states("0")["network"]
    heads = [v for k, v in weights.items() if k.startswith("heads.") and k.endswith("weight")]
    assert all(head.shape[0] == 2 for head in heads)  # one sigmoid output per region, no background channel

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "new_0000.nii.gz").symlink_to(root / "raw" / dataset / "imagesTr" / "case_000_0000.nii.gz")
    run_cli("predict", "-m", model, "-i", inputs, "-o", tmp_path / "out", "--save-probabilities", "--precision", "float32", check=True, root=root)
    predicted = read_image(tmp_path / "out" / "new.nii.gz").array[0]
    probabilities = np.load(tmp_path / "out" / "new.probabilities.npz")["probabilities"].astype(np.float32)
    assert probabilities.shape == (2, *SHAPE)
    expected = np.where(probabilities[1] > 0.5, 2, np.where(probabilities[0] > 0.5, 1, 0))  # core written over whole
    assert np.mean(expected == predicted) > 0.999 and set(np.unique(predicted)) <= {0, 1, 2}

    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "new.nii.gz").symlink_to(root / "raw" / dataset / "labelsTr" / "case_000.nii.gz")
    evaluated = run_cli("evaluate", tmp_path / "out", reference, "-j", root / "raw" / dataset / "dataset.json", root=root, check=True)
    assert "whole" in evaluated.stdout and "core" in evaluated.stdout
    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    truth = read_image(reference / "new.nii.gz").array[0]
    whole_prediction, whole_truth = np.isin(predicted, [1, 2]), np.isin(truth, [1, 2])
    dice = 2 * (whole_prediction & whole_truth).sum() / (whole_prediction.sum() + whole_truth.sum())
    assert abs(report["per_case"]["new"]["whole"]["dice"] - dice) < 1e-9


@pytest.mark.slow
def test_ignore_label_is_trained_around_and_left_out_of_the_scores(tmp_path):
    root = tmp_path / "root"
    dataset = "Dataset995_Sparse"
    _dataset(root / "raw" / dataset, {"background": 0, "object": 1, "ignore": 2}, {}, ignore_half=True)
    run_cli("plan-and-train", "--dataset", dataset, "-c", "3d_fullres", "--folds", "0", "--epochs", "3", "--iterations-per-epoch", "10", root=root, check=True)
    model = root / "results" / dataset / "unet__medsegPlans__3d_fullres"
    assert json.loads((model / "model.json").read_text())["labels"] == {"background": 0, "object": 1}
    validation = model / "fold_0" / "validation"
    summary = json.loads((validation / "summary.json").read_text())
    case = next(iter(summary["per_case"]))
    predicted = read_image(validation / f"{case}.nii.gz").array[0]
    truth = read_image(root / "raw" / dataset / "labelsTr" / f"{case}.nii.gz").array[0]
    assert 2 not in np.unique(predicted)  # the ignore label is never predicted
    annotated = truth != 2
    p, r = (predicted == 1) & annotated, (truth == 1) & annotated
    expected = 2 * (p & r).sum() / (p.sum() + r.sum()) if p.sum() + r.sum() else float("nan")
    assert abs(summary["per_case"][case]["object"]["dice"] - expected) < 1e-9
