"""Same data, same fold, same CPU wall-clock training budget: medseg vs nnunetv2, JSON out.

    .venv/bin/python bench/pipeline/cpu_budget.py --dataset DSB2018|KvasirSEG|Hippocampus [--minutes 10] [--fold 0]
        [--tools medseg,medseg-bf16,medseg-resenc,medseg-resenc_m,nnunet,nnunet-resenc_m] [--work bench_work]

For each tool: plan with its defaults for this machine (medseg's CPU planner is told the training
budget), preprocess, train fold ``--fold`` for ``--minutes`` of wall-clock training, then predict and score that fold's held-out cases in their
original geometry (Dice per class, foreground mean). nnunetv2 needs MEDSEG_EXTRAS=dev,peers; its
default planner sizes for an 8 GB GPU, which is what a user gets on a CPU, and its trainer has no
time budget, so this script runs its training loop with a wall-clock stop (5 iterations per epoch
so the stop lands close to the budget; the learning rate follows its 1000-epoch schedule, as in a
real run cut short). ``medseg-bf16`` is medseg planned and trained with ``--precision bfloat16``
(its CPU plan timed in bf16, its own plans file ``medsegPlans_bf16``). ``medseg-resenc`` trains the
residual-encoder U-Net under medseg's CPU time plan, ``medseg-resenc_m`` under nnU-Net's ResEnc M
preset (sized for an 8 GB GPU), ``nnunet-resenc_m`` is nnunetv2 with ``nnUNetPlannerResEncM``.
2D datasets train the 2d configuration, the Hippocampus (real 3D MR, MSD layout) 3d_fullres.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {"DSB2018": SHARED / "microscopy-dsb2018", "KvasirSEG": SHARED / "endoscopy-kvasir-seg", "Hippocampus": SHARED / "mr3d-hippocampus-msd-train"}
RECIPES = {"Hippocampus": "MSD"}  # the recipe converting a dataset, where it is not named after it
CONFIGURATIONS = {"Hippocampus": "3d_fullres"}  # default: 2d
# tool -> (model family, preset, precision, plans name)
MEDSEG_TOOLS = {
    "medseg": ("unet", None, "float32", "medsegPlans"),
    "medseg-bf16": ("unet", None, "bfloat16", "medsegPlans_bf16"),
    "medseg-resenc": ("resenc_unet", None, "float32", "medsegPlans_resenc_unet"),
    "medseg-resenc_m": ("resenc_unet", "resenc_m", "float32", "medsegPlans_resenc_m"),
}
NNUNET_PLANNERS = {"nnunet": "ExperimentPlanner", "nnunet-resenc_m": "nnUNetPlannerResEncM"}


def medseg(*args: str, root: Path) -> str:
    env = dict(os.environ, MEDSEG_ROOT=str(root), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "medseg.cli", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def raw_dataset(name: str, root: Path) -> Path:
    from medseg_datasets import get_recipe

    recipe = get_recipe(RECIPES.get(name, name))
    folder = root / "raw" / recipe.folder_name_for(SOURCES[name])
    if not (folder / "dataset.json").is_file():
        medseg("datasets", "convert", recipe.name, "--src", str(SOURCES[name]), root=root)
    return folder


def run_medseg(name: str, root: Path, fold: int, minutes: float, tool: str = "medseg") -> dict:
    model, preset, precision, plans_name = MEDSEG_TOOLS[tool]
    raw = raw_dataset(name, root)
    started = time.perf_counter()
    medseg("fingerprint", name, root=root)
    options = ["--model", model, "--plans-name", plans_name, "--precision", precision] + (["--preset", preset] if preset else [])
    plan_output = medseg("plan", name, "--time-budget", str(minutes), *options, root=root)
    plans = json.loads((root / "preprocessed" / raw.name / f"{plans_name}.json").read_text())
    configuration = CONFIGURATIONS.get(name, "2d")
    medseg("preprocess", name, "-c", configuration, "--plans-name", plans_name, root=root)
    prepared = time.perf_counter() - started
    started = time.perf_counter()
    medseg("train", name, configuration, str(fold), "--time-budget", str(minutes), "--plans-name", plans_name, "--precision", precision, root=root)
    trained = time.perf_counter() - started
    fold_folder = root / "results" / raw.name / f"{model}__{plans_name}__{configuration}" / f"fold_{fold}"
    summary = json.loads((fold_folder / "validation" / "summary.json").read_text())
    log = json.loads((fold_folder / "log.json").read_text())
    config = plans["configurations"][configuration]
    kwargs = config["architecture"]["kwargs"]
    return {
        "tool": tool,
        "model": model,
        "configuration": configuration,
        "precision": log.get("precision", precision),
        "plan": {"patch_size": config["patch_size"], "batch_size": config["batch_size"], "planner": plans["planner"],
                 "features_per_stage": kwargs["features_per_stage"], "blocks_per_stage": kwargs.get("n_blocks_per_stage", kwargs.get("n_conv_per_stage"))},
        "iterations": log["state"]["iteration"],
        "seconds_prepare": round(prepared, 1),
        "seconds_train_and_validate": round(trained, 1),
        "held_out_cases": summary["num_cases"],
        "dice_per_class": {k: v["dice"] for k, v in summary["mean"].items()},
        "dice_foreground_mean": summary["foreground_mean"]["dice"],
        "plan_output": plan_output.strip().splitlines()[:3],
    }


NNUNET_SCRIPT = r'''
import json, os, sys, time
raw, pre, res, dataset_id, fold, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
configuration, planner = sys.argv[7], sys.argv[8]
os.environ.update(nnUNet_raw=raw, nnUNet_preprocessed=pre, nnUNet_results=res)
if __name__ == "__main__":
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    t0 = time.perf_counter()
    extract_fingerprints([dataset_id], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    plans_name = plan_experiments([dataset_id], planner)
    preprocess([dataset_id], plans_name, configurations=(configuration,), num_processes=(2,))
    prepared = time.perf_counter() - t0
    trainer = get_trainer_from_args(str(dataset_id), configuration, fold, "nnUNetTrainer", plans_name, device=torch.device("cpu"))
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 5, 1
    trainer.on_train_start()
    t0, iterations = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds and trainer.current_epoch < trainer.num_epochs:
        trainer.on_epoch_start(); trainer.on_train_epoch_start()
        outputs = [trainer.train_step(next(trainer.dataloader_train)) for _ in range(trainer.num_iterations_per_epoch)]
        iterations += len(outputs)
        trainer.on_train_epoch_end(outputs)
        with torch.no_grad():
            trainer.on_validation_epoch_start()
            trainer.on_validation_epoch_end([trainer.validation_step(next(trainer.dataloader_val))])
        trainer.on_epoch_end()
    trained = time.perf_counter() - t0
    trainer.on_train_end()
    trainer.perform_actual_validation(False)
    summary = json.load(open(os.path.join(trainer.output_folder, "validation", "summary.json")))
    print("RESULT=" + json.dumps({"iterations": iterations, "seconds_prepare": round(prepared, 1), "seconds_train": round(trained, 1),
          "batch_size": trainer.configuration_manager.batch_size, "patch_size": list(trainer.configuration_manager.patch_size),
          "plans_name": plans_name, "network": trainer.configuration_manager.network_arch_class_name,
          "dice_foreground_mean": summary["foreground_mean"]["Dice"],
          "dice_per_class": {k: v["Dice"] for k, v in summary["mean"].items()}}))
'''


def run_nnunet(name: str, root: Path, work: Path, fold: int, minutes: float, tool: str = "nnunet") -> dict:
    from medseg.paths import split_dataset_name

    raw = raw_dataset(name, root)
    script = work / "nnunet_budget.py"
    script.write_text(NNUNET_SCRIPT)
    configuration = CONFIGURATIONS.get(name, "2d")
    command = [sys.executable, str(script), str(raw.parent), str(work / "nnunet_pre"), str(work / "nnunet_res"),
               str(split_dataset_name(raw.name)[0]), str(fold), str(minutes * 60), configuration, NNUNET_PLANNERS[tool]]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT=")]
    tool_name = tool.replace("nnunet", "nnunetv2", 1)
    if result.returncode != 0 or not lines:
        return {"tool": tool_name, "error": (result.stdout + result.stderr)[-3000:]}
    return {"tool": tool_name, "configuration": configuration, **json.loads(lines[-1][len("RESULT="):])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(SOURCES), required=True)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--tools", default="medseg,nnunet")
    parser.add_argument("--work", type=Path, default=REPO / "bench_work")
    parser.add_argument("--output", type=Path, help="[default: bench/results/cpu_budget_DATASET.json]")
    args = parser.parse_args()
    work = args.work / args.dataset
    work.mkdir(parents=True, exist_ok=True)
    root = work / "medseg_root"
    results = []
    for tool in args.tools.split(","):
        if tool in MEDSEG_TOOLS:
            results.append(run_medseg(args.dataset, root, args.fold, args.minutes, tool))
        elif tool in NNUNET_PLANNERS:
            results.append(run_nnunet(args.dataset, root, work, args.fold, args.minutes, tool))
        else:
            raise SystemExit(f"unknown tool {tool!r} (choose {', '.join([*MEDSEG_TOOLS, *NNUNET_PLANNERS])})")
        print(json.dumps(results[-1], indent=1))
    import torch

    output = args.output or REPO / "bench" / "results" / f"cpu_budget_{args.dataset}.json"
    command = " ".join([Path(sys.executable).name, *sys.argv])
    for result in results:
        result["command"] = command
    if output.is_file():  # keep the other tools' results of the same setting (tools may run separately)
        previous = json.loads(output.read_text())
        if (previous.get("fold"), previous.get("minutes")) == (args.fold, args.minutes):
            ran = {r["tool"] for r in results}
            results = [r for r in previous["results"] if r["tool"] not in ran] + results
    scores = {r["tool"]: r.get("dice_foreground_mean") for r in results}
    content = {
        "dice_ratio_medseg_over_nnunetv2": (scores["medseg"] / scores["nnunetv2"]) if scores.get("medseg") and scores.get("nnunetv2") else None,
        "dice_ratio_bf16_over_float32": (scores["medseg-bf16"] / scores["medseg"]) if scores.get("medseg") and scores.get("medseg-bf16") else None,
        "dice_ratio_medseg_resenc_over_nnunetv2_resenc_m": (
            scores["medseg-resenc"] / scores["nnunetv2-resenc_m"] if scores.get("medseg-resenc") and scores.get("nnunetv2-resenc_m") else None
        ),
        "dataset": args.dataset, "fold": args.fold, "minutes": args.minutes,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "results": results,
    }
    output.write_text(json.dumps(content, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
