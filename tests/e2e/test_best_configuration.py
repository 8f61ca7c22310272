"""Configuration search on real 3D data: the MSD Hippocampus (a subset) imported, 2d and 3d_fullres
cross-validated by plan-and-train, every configuration and their ensemble scored on the out-of-fold
predictions, and the ensemble folder predicting through `medseg predict` like any model folder."""

import json

import numpy as np
import pytest

from medseg.io import read_image
from tests.conftest import run_cli

CASES = 16


@pytest.fixture(scope="module")
def hippocampus(shared_data, tmp_path_factory):
    """A Decathlon task folder holding the first CASES cases of the shared release (links, not copies)."""
    source = shared_data / "mr3d-hippocampus-msd-train"
    task = tmp_path_factory.mktemp("msd") / "Task04_Hippocampus"
    description = json.loads((source / "dataset.json").read_text())
    description["training"] = description["training"][:CASES]
    description["numTraining"] = CASES
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
        for entry in description["training"]:
            name = entry["image"].rsplit("/", 1)[-1]
            (task / sub / name).symlink_to(source / sub / name)
    (task / "dataset.json").write_text(json.dumps(description))
    return task


@pytest.mark.slow
def test_plan_and_train_picks_the_best_configuration_or_ensemble(hippocampus, tmp_path):
    root = tmp_path / "root"
    run_cli("datasets", "convert", "MSD", "--src", hippocampus, root=root, check=True)
    trained = run_cli(
        "plan-and-train", "--dataset", "Hippocampus", "-c", "2d", "-c", "3d_fullres", "--folds", "0,1", "--epochs", "2",
        "--iterations-per-epoch", "4", root=root, check=True,
    )
    assert "best configuration:" in trained.stdout, trained.stdout[-2000:]
    results = root / "results" / "Dataset004_Hippocampus"
    choice = json.loads((results / "best_configuration.json").read_text())
    names = [c["name"] for c in choice["candidates"]]
    singles = ["unet__medsegPlans__2d", "unet__medsegPlans__3d_fullres"]
    assert names == [*singles, f"ensemble__{singles[0]}__{singles[1]}"]
    assert all(c["foreground_dice"] is not None for c in choice["candidates"]), choice
    assert choice["best"]["foreground_dice"] == max(c["foreground_dice"] for c in choice["candidates"])

    # the ensemble's out-of-fold predictions are the mean of its members' kept probabilities
    pooled = results / "ensembles" / names[2] / "crossval_predictions"
    case = sorted(p.name for p in pooled.iterdir())[0].removesuffix(".nii.gz")
    members = []
    for single in singles:
        fold = next(f for f in ("0", "1") if (results / single / f"fold_{f}" / "validation" / f"{case}.nii.gz").is_file())
        members.append(np.load(results / single / f"fold_{fold}" / "validation" / f"{case}.probabilities.npz")["probabilities"].astype(np.float32))
    assert np.array_equal(read_image(pooled / f"{case}.nii.gz").array[0], np.argmax((members[0] + members[1]) / 2, axis=0))

    # asked again, the search gives the same choice
    again = run_cli("find-best-configuration", "Hippocampus", root=root, check=True)
    assert f"best: {choice['best']['name']}" in again.stdout
    assert json.loads((results / "best_configuration.json").read_text())["best"] == choice["best"]

    # only a winning ensemble is a predictable folder
    from medseg.ensemble_folder import ENSEMBLE_FILE, write_ensemble_folder
    from medseg.model_folder import ModelFolder

    assert (results / "ensembles" / names[2] / ENSEMBLE_FILE).is_file() == (choice["best"]["name"] == names[2])

    # an ensemble folder predicts through the front door: labels = argmax of the members' mean probabilities
    ensemble = tmp_path / "pair"
    write_ensemble_folder(ensemble, [ModelFolder.open(results / s) for s in singles], {"largest_component_classes": []})
    image = sorted((root / "raw" / "Dataset004_Hippocampus" / "imagesTr").iterdir())[0]
    case_id = image.name.removesuffix("_0000.nii.gz")
    single_input = tmp_path / "in"
    single_input.mkdir()
    (single_input / image.name).symlink_to(image)
    run_cli("predict", "-m", ensemble, "-i", single_input, "-o", tmp_path / "ens", "--precision", "float32", check=True)
    probabilities = []
    for single in singles:
        run_cli("predict", "-m", results / single, "-i", single_input, "-o", tmp_path / single, "--save-probabilities", "--precision", "float32", check=True)
        probabilities.append(np.load(tmp_path / single / f"{case_id}.probabilities.npz")["probabilities"].astype(np.float32))
    labels = read_image(tmp_path / "ens" / f"{case_id}.nii.gz").array[0]
    expected = np.argmax((probabilities[0] + probabilities[1]) / 2, axis=0)
    assert np.mean(labels == expected) > 0.999  # the members' probabilities were saved as float16: near-ties may differ
    described = json.loads(run_cli("describe", ensemble, "--json", check=True).stdout)
    assert described["family"] == "ensemble(unet+unet)" and described["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
