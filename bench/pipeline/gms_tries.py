"""GMS on the frozen TAEF2, Kvasir-SEG fold 0: what the paper's design suggests, one change per try, at
the same CPU training budget each; JSON out.

    .venv/bin/python bench/pipeline/gms_tries.py [--minutes 5] [--tries bf16,dice1,...] [--work DIR]
        [--out bench/results/gms_tries_kvasir_fold0.json]

Each try is a plans file of its own: ``medseg plan --model SPEC [--preset ...]`` and then the
change written into its "training" block (as a user edits nnU-Net plans), trained with the real
CLI (`plan-and-train --plans-name ... --autoencoder TAEF2 --folds 0 --time-budget-per-run M`).
Tries of one image side share their preprocessed images and latent caches. The score is the
held-out cases' foreground Dice from the final validation (each image at its own size); the
iterations and the JSON are written after every try, so an interrupted run keeps what it measured.
Run it alone: two cores, and the budgets are wall-clock."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
sys.path.insert(0, str(REPO / "bench" / "pipeline"))
from common import machine_info  # noqa: E402
from gms_vs_unet import DATASET, SHARED, head_commit, medseg  # noqa: E402

# name -> (model spec, preset, precision, changes to the plan's training block, what it tests)
TRIES = {
    "fp32": ("gms", None, "float32", {}, "GMS as its paper trains it (Dice through the decoder on the 3 finest outputs), in float32"),
    "bf16": ("gms", None, "bfloat16", {}, "the same in bf16 autocast (losses in float32): about 2.1x the steps"),
    "dice1": ("gms", None, "bfloat16", {"dice_outputs": 1}, "Dice through the decoder on the finest output only (latent MSE on all 3): about 2.6x the steps again"),
    "flips": ("gms", None, "bfloat16", {"dice_outputs": 1, "flips": ["h", "v", "hv"]}, "dice1 + the training images also encoded flipped (GMS's augmentation has flips)"),
    "side224": ("gms", "gms_paper", "bfloat16", {"dice_outputs": 1}, "dice1 at GMS's 224 x 224 (a 28 x 28 latent)"),
    "latent0.1": ("gms", None, "bfloat16", {"dice_outputs": 1, "latent_loss_weight": 0.1}, "dice1 with the latent MSE weighted 0.1 (the Dice leads)"),
    "width64": ("gms[width=64]", None, "bfloat16", {"dice_outputs": 1}, "dice1 with a mapper twice as wide"),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0, help="training minutes of each try")
    parser.add_argument("--tries", default="bf16,dice1,flips,side224", help=f"comma-separated, of {', '.join(TRIES)}")
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "gms_tries")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gms_tries_kvasir_fold0.json")
    args = parser.parse_args()
    root = args.work
    raw = root / "raw" / DATASET
    report = {"commit": head_commit(), "machine": machine_info(), "command": "python bench/pipeline/gms_tries.py " + " ".join(sys.argv[1:]), "dataset": DATASET, "fold": 0,
              "autoencoder": "TAEF2 (../shared/data/ae-natural-taef2), frozen", "minutes_each": args.minutes, "tries": {}}
    if args.out.is_file():  # a rerun adds to what an earlier run measured
        report["tries"] = json.loads(args.out.read_text()).get("tries", {})
    if not raw.is_dir():
        medseg("datasets", "convert", "KvasirSEG", "--src", SHARED / "endoscopy-kvasir-seg", root=root)
    if not (root / "preprocessed" / DATASET / "fingerprint.json").is_file():
        medseg("fingerprint", DATASET, root=root)
    for name in args.tries.split(","):
        spec, preset, precision, changes, what = TRIES[name]
        plans_name = "gmsTry_" + name.replace(".", "_")
        medseg("plan", DATASET, "--model", spec, "--plans-name", plans_name, *(["--preset", preset] if preset else []), root=root)
        plans_file = root / "preprocessed" / DATASET / f"{plans_name}.json"
        plans = json.loads(plans_file.read_text())
        configuration = plans["configurations"]["2d"]
        configuration["training"].update(changes)
        configuration["data_identifier"] = f"gmsTries_side{configuration['patch_size'][0]}_2d"  # shared images and latents per side
        plans_file.write_text(json.dumps(plans, indent=1))
        started = time.perf_counter()
        medseg(
            "plan-and-train", "--dataset", DATASET, "--model", spec, "--plans-name", plans_name, "--autoencoder", SHARED / "ae-natural-taef2",
            "--folds", "0", "--time-budget-per-run", args.minutes, "--precision", precision, root=root,
        )
        fold = root / "results" / DATASET / f"{spec.split('[')[0]}__{plans_name}__2d" / "fold_0"
        log = json.loads((fold / "log.json").read_text())
        report["tries"][name] = {
            "what": what, "model": spec, "preset": preset, "precision": log["precision"], "training_changes": changes, "side": configuration["patch_size"][0],
            "dice": round(json.loads((fold / "validation" / "summary.json").read_text())["foreground_mean"]["dice"], 4),
            "iterations": log["state"]["iteration"], "epochs": log["state"]["epoch"], "wall_seconds": round(time.perf_counter() - started, 1),
            "commit": report["commit"],  # a rerun keeps earlier tries: each says what code it ran
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({name: report["tries"][name]}), flush=True)


if __name__ == "__main__":
    main()
