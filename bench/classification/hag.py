"""Hard-attention gates (HAG) with gradient routing vs the plain CNN, same folds and CPU budget, on
the Kvasir-SEG polyp-size proxy (3 classes by polyp-area tertile: KvasirPolypSize), JSON out.

    .venv/bin/python bench/classification/hag.py [--folds 0,1,2] [--minutes 3]
        [--variants resnet18,hag_cnn,hag_cnn_separate,vit,hag_vit,hag_vit_separate] [--work bench_work/hag]

Variants: ``resnet18`` / ``vit`` (no gates), ``hag_cnn`` / ``hag_vit`` (gates on every stage output
or residual branch, gradient routing as published: the main step also gets the gate pass's
gradients), ``*_separate`` (the same, with the two passes kept apart: ``gate_gradients_reach_main``
false in the plan). Every CNN variant gets the input size and batch planned for resnet18, every ViT
variant those planned for vit (the gates cost almost nothing; planning each one would only add
timing noise); each runs in its own MEDSEG_ROOT (the raw dataset shared by a symlink) on the same
class-stratified folds. Results of variants not run this time are kept from the JSON already there. Scores: the cross-validation report over the held-out frames of the folds
(macro F1 and balanced accuracy of the most probable class, mean one-vs-rest AUC). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, SHARED, arm_root, medseg  # noqa: E402
DATASET = "Dataset006_KvasirPolypSize"
VARIANTS = {
    "resnet18": ("resnet18", True), "hag_cnn": ("hag_cnn", True), "hag_cnn_separate": ("hag_cnn", False),
    "vit": ("vit", True), "hag_vit": ("hag_vit", True), "hag_vit_separate": ("hag_vit", False),
}
TARGET = REPO / "bench" / "results" / "classification_hag_kvasir_size.json"


def kind_of(family: str) -> str:
    return "vit" if "vit" in family else "cnn"




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes per run (one variant, one fold)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "hag")
    args = parser.parse_args()
    work = args.work
    if not (work / "raw" / DATASET).is_dir():
        medseg("datasets", "convert", "KvasirPolypSize", "--src", SHARED / "endoscopy-kvasir-seg", root=work)
    command = "python bench/classification/hag.py " + " ".join(sys.argv[1:])
    previous = json.loads(TARGET.read_text()) if TARGET.is_file() else {}
    for result in previous.get("results", {}).values():  # the first version kept these once for all
        result.setdefault("minutes_per_run", previous.get("minutes_per_run"))
        result.setdefault("folds", previous.get("folds"))
    sizing = previous.get("sizing", {})
    if "input_size" in sizing:  # the first version of this file sized CNNs only
        sizing = {"cnn": sizing}
    results = previous.get("results", {})
    for variant in args.variants.split(","):
        family, reach_main = VARIANTS[variant]
        root = arm_root(work, variant, DATASET)
        plans_file = root / "preprocessed" / DATASET / f"medsegPlans_{family}.json"
        if not plans_file.is_file():
            medseg("fingerprint", DATASET, root=root)
            medseg("plan", DATASET, "--model", family, "--time-budget", args.minutes, root=root)
            plans = json.loads(plans_file.read_text())
            configuration = plans["configurations"]["2d"]
            kwargs = configuration["architecture"]["kwargs"]
            if kind_of(family) not in sizing:
                sizing[kind_of(family)] = {"input_size": kwargs["input_size"], "batch": configuration["batch_size"], "patch": kwargs.get("patch")}
            chosen = sizing[kind_of(family)]
            kwargs["input_size"] = configuration["patch_size"] = list(chosen["input_size"])
            if chosen.get("patch"):
                kwargs["patch"] = chosen["patch"]
            configuration["batch_size"] = chosen["batch"]
            if family.startswith("hag"):
                configuration["training"]["gate_gradients_reach_main"] = reach_main
            plans_file.write_text(json.dumps(plans, indent=1))
        else:
            configuration = json.loads(plans_file.read_text())["configurations"]["2d"]
            sizing.setdefault(kind_of(family), {"input_size": configuration["patch_size"], "batch": configuration["batch_size"]})
        medseg("plan-and-train", "--dataset", DATASET, "--model", family, "--folds", args.folds, "--time-budget-per-run", args.minutes, root=root)
        folder = next((root / "results" / DATASET).glob(f"{family}__*__2d"))
        report = json.loads((folder / "crossval_summary.json").read_text())
        logs = [json.loads((folder / f"fold_{fold}" / "log.json").read_text()) for fold in args.folds.split(",")]
        results[variant] = {
            "family": family, "gate_gradients_reach_main": reach_main if family.startswith("hag") else None,
            "num_cases": report["num_cases"], "accuracy": report["accuracy"], "mean": report["mean"],
            "per_class": {k: {m: v[m] for m in ("auc", "f1", "sensitivity")} for k, v in report["per_class"].items()},
            "iterations": [log["state"]["iteration"] for log in logs],
            "minutes_per_run": args.minutes, "folds": args.folds,
        }
    content = {
        "commands": previous.get("commands", [previous["command"]] if "command" in previous else []) + [command],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "dataset": "Kvasir-SEG polyp-area tertiles (KvasirPolypSize recipe; a size proxy, no patient grouping possible)",
        "sizing": sizing, "results": results,
    }
    target = TARGET
    target.write_text(json.dumps(content, indent=1))
    for variant, result in results.items():
        mean = result["mean"]
        print(f"{variant}: F1 {mean['f1']:.4f}, balanced accuracy {mean['balanced_accuracy']:.4f}, AUC {mean['auc']:.4f}, iterations {result['iterations']}")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
