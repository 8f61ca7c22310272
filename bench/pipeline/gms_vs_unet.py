"""GMS against the U-Net on Kvasir-SEG under the same total CPU training budget; JSON out.

    .venv/bin/python bench/pipeline/gms_vs_unet.py [--minutes 30] [--ae-share 0.4] [--folds 0,1,2]
        [--arms unet,gms,gms_taef2] [--out bench/results/gms_vs_unet_kvasir.json]

Every arm gets ``--minutes`` of training in all. ``gms`` spends ``--ae-share`` of it on `medseg
pretrain-ae` (its autoencoder learns the dataset's images) and the rest on its folds; ``gms_taef2``
segments in the frozen natural-image TAEF2 of ../shared/data (``--autoencoder``, as GMS's paper
intends: nothing to pretrain, so all of it goes to its folds; its own MEDSEG_ROOT beside the
others, the raw dataset shared); the U-Net spends all of it on its folds. Both run the real CLI (`plan-and-train
--time-budget-per-run`) on the same 5-fold split, and each fold's Dice is its held-out cases'
foreground Dice from the final validation (original image size). Wall-clock seconds of every
command are recorded too (planning, preprocessing, GMS's latent encoding and validation come on top
of the training budget). Run it alone: two cores, and the budgets are wall-clock."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info  # noqa: E402

SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
DATASET = "Dataset003_KvasirSEG"


def head_commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def medseg(*args, root: Path) -> float:
    """Run the CLI, streaming its output; returns wall seconds (fails loudly)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "medseg.cli", *map(str, args)]
    print("$ medseg " + " ".join(map(str, args)), flush=True)
    if subprocess.run(command, env=dict(os.environ, MEDSEG_ROOT=str(root))).returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return round(time.perf_counter() - started, 1)


def fold_dice(folder: Path, folds: list[str]) -> dict[str, float]:
    return {fold: json.loads((folder / f"fold_{fold}" / "validation" / "summary.json").read_text())["foreground_mean"]["dice"] for fold in folds}


def case_dice(folder: Path, folds: list[str]) -> dict[str, float]:
    """Each held-out image's foreground Dice (mean over labels), over the folds."""
    values = {}
    for fold in folds:
        for case, labels in json.loads((folder / f"fold_{fold}" / "validation" / "summary.json").read_text())["per_case"].items():
            values[case] = sum(v["dice"] for v in labels.values()) / len(labels)
    return values


def paired_against_unet(folders: dict[str, Path], folds: list[str]) -> dict:
    """Per image, each GMS arm against the U-Net: the mean difference, wins and losses, and the
    Wilcoxon signed-rank p-value (the same held-out images)."""
    from scipy.stats import wilcoxon

    unet = case_dice(folders["unet"], folds)
    paired = {}
    for arm, folder in folders.items():
        if arm == "unet":
            continue
        ours = case_dice(folder, folds)
        cases = sorted(unet)
        differences = [ours[c] - unet[c] for c in cases]
        paired[arm] = {"images": len(cases), "mean_difference": round(sum(differences) / len(cases), 4), "wins": sum(d > 0 for d in differences),
                       "losses": sum(d < 0 for d in differences), "wilcoxon_p": float(wilcoxon([ours[c] for c in cases], [unet[c] for c in cases]).pvalue)}
    return paired


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30.0, help="total training minutes for each method")
    parser.add_argument("--ae-share", type=float, default=0.4, help="GMS: the share of its budget spent pretraining the autoencoder")
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--arms", default="unet,gms,gms_taef2")
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "gms_vs_unet")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gms_vs_unet_kvasir.json")
    args = parser.parse_args()
    folds = args.folds.split(",")
    root = args.work
    raw = root / "raw" / DATASET
    seconds = {}
    if not raw.is_dir():
        seconds["convert"] = medseg("datasets", "convert", "KvasirSEG", "--src", SHARED / "endoscopy-kvasir-seg", root=root)
    arms = args.arms.split(",")
    ae_minutes = args.minutes * args.ae_share
    per_fold = args.minutes / len(folds)
    report = {"commit": head_commit(), "machine": machine_info(), "command": "python bench/pipeline/gms_vs_unet.py " + " ".join(sys.argv[1:]), "dataset": DATASET, "budget_minutes_each": args.minutes}
    if "gms" in arms:
        gms_per_fold = (args.minutes - ae_minutes) / len(folds)
        seconds["pretrain_ae"] = medseg("pretrain-ae", "--dataset", DATASET, "--time-budget", ae_minutes, root=root)
        seconds["gms"] = medseg("plan-and-train", "--dataset", DATASET, "--model", "gms", "--folds", args.folds, "--time-budget-per-run", gms_per_fold, root=root)
        dice = fold_dice(root / "results" / DATASET / "gms__medsegPlans_gms__2d", folds)
        report["gms"] = {"autoencoder_minutes": ae_minutes, "minutes_per_fold": gms_per_fold, "fold_dice": dice, "mean_dice": round(sum(dice.values()) / len(dice), 4)}
    if "gms_taef2" in arms:
        own = root / "taef2"  # a model folder keeps one autoencoder: this arm plans and trains in a root of its own
        (own / "raw").mkdir(parents=True, exist_ok=True)
        if not (own / "raw" / DATASET).exists():
            (own / "raw" / DATASET).symlink_to(raw.resolve(), target_is_directory=True)
        seconds["gms_taef2"] = medseg(
            "plan-and-train", "--dataset", DATASET, "--model", "gms", "--autoencoder", SHARED / "ae-natural-taef2", "--folds", args.folds,
            "--time-budget-per-run", per_fold, root=own,
        )
        dice = fold_dice(own / "results" / DATASET / "gms__medsegPlans_gms__2d", folds)
        report["gms_taef2"] = {"autoencoder": "TAEF2 (../shared/data/ae-natural-taef2), frozen", "minutes_per_fold": per_fold, "fold_dice": dice,
                               "mean_dice": round(sum(dice.values()) / len(dice), 4)}
    if "unet" in arms:
        seconds["unet"] = medseg("plan-and-train", "--dataset", DATASET, "--model", "unet", "-c", "2d", "--folds", args.folds, "--time-budget-per-run", per_fold, root=root)
        dice = fold_dice(root / "results" / DATASET / "unet__medsegPlans__2d", folds)
        report["unet"] = {"minutes_per_fold": per_fold, "fold_dice": dice, "mean_dice": round(sum(dice.values()) / len(dice), 4)}
    folders = {"gms": root / "results" / DATASET / "gms__medsegPlans_gms__2d", "gms_taef2": root / "taef2" / "results" / DATASET / "gms__medsegPlans_gms__2d",
               "unet": root / "results" / DATASET / "unet__medsegPlans__2d"}
    if "unet" in arms and len(arms) > 1:
        report["paired_per_image"] = paired_against_unet({arm: folders[arm] for arm in arms}, folds)
    report["wall_seconds"] = seconds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in arms}, indent=1))


if __name__ == "__main__":
    main()
