"""Every model family on the same dataset, folds and CPU budget per run, through `medseg compare`.

    .venv/bin/python bench/pipeline/compare_families.py --dataset AbdomenMRI-demo [--folds 0,1,2]
        [--minutes 2] [--models unet,umamba_bot,umamba_enc,xlstm_unet_bot,xlstm_unet_enc]
        [--work bench_work/compare] [--name NAME]

Builds the dataset (the synthetic 3D demo, or DSB2018 / KvasirSEG / the MSD Hippocampus (real 3D MR)
converted from ../shared/data),
runs `medseg compare` in a fresh MEDSEG_ROOT under --work, and copies its table and JSON to
bench/results/compare_<dataset>.{md,json} with the command and the machine. Run it alone: the
budget is wall-clock time, and another heavy process takes iterations away from every family.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
SOURCES = {"DSB2018": SHARED / "microscopy-dsb2018", "KvasirSEG": SHARED / "endoscopy-kvasir-seg", "Hippocampus": SHARED / "mr3d-hippocampus-msd-train"}
RECIPES = {"Hippocampus": "MSD"}  # the recipe converting a dataset, where it is not named after it
FAMILIES = "unet,umamba_bot,umamba_enc,xlstm_unet_bot,xlstm_unet_enc"


def medseg(*args: str, root: Path) -> None:
    env = dict(os.environ, MEDSEG_ROOT=str(root), COLUMNS="200")
    if subprocess.run([sys.executable, "-m", "medseg.cli", *args], env=env).returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="AbdomenMRI-demo", choices=["AbdomenMRI-demo", *SOURCES])
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--minutes", type=float, default=2.0, help="training minutes per run (one family, one fold)")
    parser.add_argument("--models", default=FAMILIES)
    parser.add_argument("--work", type=Path, default=REPO / "bench_work" / "compare")
    parser.add_argument("--name", help="results name [default: the dataset]: bench/results/compare_NAME.{md,json}")
    args = parser.parse_args()
    root = args.work / args.dataset
    if args.dataset == "AbdomenMRI-demo":
        if not (root / "raw").is_dir():
            medseg("datasets", "synth", "AbdomenMRI-demo", root=root)
    elif not (root / "raw").is_dir():
        medseg("datasets", "convert", RECIPES.get(args.dataset, args.dataset), "--src", str(SOURCES[args.dataset]), root=root)
    medseg("compare", "--dataset", args.dataset, "--models", args.models, "--folds", args.folds, "--time-budget", str(args.minutes), root=root)
    found = sorted((root / "results").glob("*/compare__*/compare.json"))
    if not found:
        raise SystemExit("no comparison was written")
    source = found[-1]
    command = "python bench/pipeline/compare_families.py " + " ".join(sys.argv[1:])
    content = json.loads(source.read_text())
    content.update(command=command, machine={"platform": platform.platform(), "cpus": os.cpu_count()}, minutes_per_run=args.minutes)
    results, name = REPO / "bench" / "results", args.name or args.dataset
    results.mkdir(parents=True, exist_ok=True)
    (results / f"compare_{name}.json").write_text(json.dumps(content, indent=1))
    shutil.copyfile(source.with_suffix(".md"), results / f"compare_{name}.md")
    with open(results / f"compare_{name}.md", "a") as handle:
        handle.write(f"\nCommand: `{command}` ({args.minutes} training minutes per run, {os.cpu_count()} CPU cores)\n")
    print(f"wrote {results / f'compare_{name}.md'}")


if __name__ == "__main__":
    main()
