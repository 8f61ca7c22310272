"""Model cards: plan-and-train writes card.json (training data, cross-validation, medseg version
and commit, a sha256 per weight file), `medseg card --set` fills the rest and keeps it, `describe`
shows it, and a weight file changed after the card is refused by name wherever it loads."""

from __future__ import annotations

import json

from tests.conftest import BRIGHT_DATASET, build_bright_dataset, copy_bright_images, run_cli


def test_a_card_is_written_filled_shown_and_guards_the_weights(tmp_path):
    root = tmp_path / "root"
    build_bright_dataset(root / "raw" / BRIGHT_DATASET, cases=5)
    run_cli("plan-and-train", "--dataset", BRIGHT_DATASET, "--folds", "0,1", "--epochs", "1", "--workers", "1", root=root, check=True)
    folder = root / "results" / BRIGHT_DATASET / "unet__medsegPlans__3d_fullres"
    card = json.loads((folder / "card.json").read_text())
    assert card["name"] == folder.name and card["licence"] == "not stated" and card["task"] == "segmentation"
    assert card["training_data"]["dataset"] == BRIGHT_DATASET and card["training_data"]["cases"] == 5
    assert card["cross_validation"]["folds"] == ["0", "1"] and 0 <= card["cross_validation"]["foreground_mean"]["dice"] <= 1
    assert set(card["weights"]) >= {"fold_0/checkpoint_final.pt", "fold_1/checkpoint_final.pt"}
    assert all(len(digest) == 64 for digest in card["weights"].values())
    assert card["medseg"]["version"] and card["medseg"]["commit"]

    run_cli("card", folder, "--set", "licence=CC-BY-4.0", "--set", "intended_use=research only", "--set", "training_data.cases=5", root=root, check=True)
    refreshed = run_cli("card", folder, "--set", "limits=synthetic blobs, not anatomy", root=root, check=True)
    card = json.loads((folder / "card.json").read_text())
    assert (card["licence"], card["intended_use"], card["limits"]) == ("CC-BY-4.0", "research only", "synthetic blobs, not anatomy")
    assert "licence: CC-BY-4.0" in refreshed.stdout
    described = run_cli("describe", folder, root=root, check=True)
    assert "licence: CC-BY-4.0" in described.stdout and "intended use: research only" in described.stdout
    assert json.loads(run_cli("describe", folder, "--json", root=root, check=True).stdout)["card"]["licence"] == "CC-BY-4.0"

    for bad, message in ((["--set", "weights=x"], "cannot be set"), (["--set", "licence"], "expected key=value"),
                         (["--set", "training_data.cases=many"], "whole number")):
        refused = run_cli("card", folder, *bad, root=root)
        assert refused.returncode != 0 and message in refused.stderr + refused.stdout, (bad, refused.stderr)

    images = copy_bright_images(root, tmp_path / "images", count=1)
    assert run_cli("predict", "-i", images, "-o", tmp_path / "ok", "-m", folder, "--folds", "0", root=root).returncode == 0
    checkpoint = folder / "fold_0" / "checkpoint_final.pt"
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    tampered = run_cli("predict", "-i", images, "-o", tmp_path / "tampered", "-m", folder, "--folds", "0", root=root)
    output = tampered.stdout + tampered.stderr
    assert tampered.returncode != 0 and "checkpoint_final.pt" in output and "sha256" in output, output

    # medseg retraining a fold is not tampering: the card takes the new checksum
    run_cli("train", BRIGHT_DATASET, "3d_fullres", "1", "--epochs", "1", "--iterations-per-epoch", "2", "--no-validate", root=root, check=True)
    assert json.loads((folder / "card.json").read_text())["weights"]["fold_1/checkpoint_final.pt"] != card["weights"]["fold_1/checkpoint_final.pt"]
    assert run_cli("predict", "-i", images, "-o", tmp_path / "retrained", "-m", folder, "--folds", "1", root=root).returncode == 0
