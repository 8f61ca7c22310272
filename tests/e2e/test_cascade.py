"""The cascade end to end through the CLI: plan-and-train -c 3d_cascade_fullres trains 3d_lowres on
every fold first, preprocesses the cascade stage with 3d_lowres's out-of-fold segmentations, trains
it with one extra input channel per foreground class, and `medseg predict` runs both stages."""

import json

import numpy as np
import pytest

from medseg.data.builder import RawDatasetBuilder
from medseg.io import MedicalImage, read_image
from tests.conftest import run_cli

DATASET = "Dataset993_Cascade"
SHAPE = (32, 40, 40)


def _cascade_dataset(folder, cases: int = 10) -> None:
    """Isotropic volumes with a large bright blob (label 1) and a small dark one (label 2)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    with RawDatasetBuilder(folder, ".nii.gz") as builder:
        for index in range(cases):
            label = np.zeros(SHAPE, np.uint8)
            centre = rng.integers([10, 12, 12], [22, 28, 28])
            label[(zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < 100] = 1
            small = rng.integers([5, 6, 6], [27, 34, 34])
            label[(zz - small[0]) ** 2 + (yy - small[1]) ** 2 + (xx - small[2]) ** 2 < 12] = 2
            image = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE), 1.0) * 20 + 100 + 80 * (label == 1) - 60 * (label == 2)
            geometry = dict(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
            builder.add_image(f"case_{index:03d}", MedicalImage(image.astype(np.float32)[None], **geometry))
            builder.add_label(f"case_{index:03d}", MedicalImage(label[None], **geometry))
        builder.finish({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "bright": 1, "dark": 2}, "numTraining": cases, "file_ending": ".nii.gz"})


def _narrow_plans(root) -> None:
    """nnU-Net's memory rule at a tiny target, for 4-feature networks: a small full-resolution
    patch, so a 3d_lowres stage is planned, and networks cheap enough for ten CPU runs."""
    from medseg.data.layout import load_dataset_description
    from medseg.planning.budget import Budget
    from medseg.planning.fingerprint import Fingerprint
    from medseg.tasks.segmentation.planning.planner import plan_experiment

    run_cli("fingerprint", DATASET, "--workers", "1", root=root, check=True)
    preprocessed = root / "preprocessed" / DATASET
    description = load_dataset_description(root / "raw" / DATASET)
    plans = plan_experiment(Fingerprint.load(preprocessed / "fingerprint.json"), description, Budget("memory", memory_gb=0.003, base_features=4))
    plans.save(preprocessed / "medsegPlans.json")


@pytest.mark.slow
def test_cascade_trains_on_out_of_fold_predictions_and_predicts_in_two_stages(tmp_path):
    root = tmp_path / "root"
    _cascade_dataset(root / "raw" / DATASET, cases=6)
    _narrow_plans(root)
    common = ["--epochs", "1", "--iterations-per-epoch", "3"]
    refused = run_cli("plan-and-train", "--dataset", DATASET, "-c", "3d_cascade_fullres", "--folds", "0", *common, root=root)
    assert refused.returncode != 0 and "train every fold (--folds 0,1,2,3,4)" in refused.stderr + refused.stdout
    trained = run_cli("plan-and-train", "--dataset", DATASET, "-c", "3d_cascade_fullres", *common, root=root, check=True)
    assert "plans: reusing" in trained.stdout
    assert "3d_cascade_fullres builds on 3d_lowres: training 3d_lowres first" in trained.stdout
    plans = json.loads((root / "preprocessed" / DATASET / "medsegPlans.json").read_text())
    lowres, cascade = plans["configurations"]["3d_lowres"], plans["configurations"]["3d_cascade_fullres"]
    assert cascade["previous_stage"] == "3d_lowres" and lowres["spacing"] != cascade["spacing"]
    results = root / "results" / DATASET
    first, second = results / "unet__medsegPlans__3d_lowres", results / "unet__medsegPlans__3d_cascade_fullres"
    assert all((folder / "crossval_summary.json").is_file() for folder in (first, second))

    # the cascade's training data carry 3d_lowres's out-of-fold segmentation, on the full-resolution grid
    from medseg.planning.plans import Plans
    from medseg.tasks.segmentation.preprocessing.case import preprocess_case

    plans_object = Plans.load(second / "plans.json")
    case = "case_004"  # (the fold that held it out predicted it: its out-of-fold segmentation)
    fold = next(f for f in range(5) if (first / f"fold_{f}" / "validation" / f"{case}.nii.gz").is_file())
    out_of_fold = read_image(first / f"fold_{fold}" / "validation" / f"{case}.nii.gz").array
    image = read_image(root / "raw" / DATASET / "imagesTr" / f"{case}_0000.nii.gz")
    _, expected, _ = preprocess_case(image, out_of_fold, plans_object, plans_object.configuration("3d_cascade_fullres"), case)
    stored = np.load(root / "preprocessed" / DATASET / "medsegPlans_3d_cascade_fullres" / f"{case}_seg.npy")
    assert stored.shape[0] == 2 and np.array_equal(stored[1], expected[0])

    # the network sees the image and one channel per foreground class
    from medseg.model_folder import ModelFolder

    weights = ModelFolder.open(second).load_module_states("0")["network"]
    first_conv = next(v for k, v in weights.items() if k.endswith("weight") and v.ndim == 5)
    assert first_conv.shape[1] == 1 + 2

    # predict runs 3d_lowres, then the cascade stage on its segmentation
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "new_0000.nii.gz").symlink_to(root / "raw" / DATASET / "imagesTr" / "case_000_0000.nii.gz")
    image = read_image(inputs / "new_0000.nii.gz")
    run_cli("predict", "-m", second, "-i", inputs, "-o", tmp_path / "out", "--precision", "float32", "--folds", "0", check=True, root=root)
    predicted = read_image(tmp_path / "out" / "new.nii.gz")
    assert predicted.spatial_shape == SHAPE and not predicted.geometry_differences(image)

    from medseg.model_folders import open_model_folder
    from medseg.tasks import PredictorOptions, open_predictor
    from medseg.tasks.segmentation.cascade import with_previous_stage

    predictor = open_predictor(second, PredictorOptions(precision="float32", folds=["0"]))
    assert predictor.previous is not None and predictor.previous.model_folder.path == first
    first_stage = predictor.previous.predict_image(image).segmentation.array  # every fold of 3d_lowres, no postprocessing
    data, resampled, properties = preprocess_case(image, first_stage, plans_object, plans_object.configuration("3d_cascade_fullres"), "new")
    by_hand = predictor.predict_preprocessed(with_previous_stage(data, resampled[0], 3), properties).segmentation.array
    assert np.array_equal(by_hand, predicted.array)
    assert open_model_folder(second).configuration.previous_stage == "3d_lowres"
