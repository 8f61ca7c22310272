"""How well the CPU planner predicts a training step, per model family: JSON out.

    .venv/bin/python bench/pipeline/planner_accuracy.py [--families unet,umamba_bot,...] [--cases 8]
        [--out bench/results/planner_accuracy.json]

For every registered segmentation family: plan the synthetic 3D demo on this CPU (time mode, the
default here), then for its 2d and 3d_fullres configurations build the planned network and time
real training steps (deep-supervised Dice + CE, AdamW, batch and patch as planned, random data).
The planner's estimate of one step is batch x 3 x forward FLOPs / the throughput it measured; the
JSON holds both, their ratio, and the planner's activation count (its GPU-memory proxy, which this
CPU machine cannot check). Run it alone: another heavy process makes every step slower.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))

from common import machine_info, timed  # noqa: E402


def medseg(*args: str, root: Path) -> None:
    env = dict(os.environ, MEDSEG_ROOT=str(root), COLUMNS="200")
    result = subprocess.run([sys.executable, "-m", "medseg.cli", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"medseg {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def measured_step_seconds(configuration, in_channels: int, num_classes: int, repeats: int) -> float:
    import torch

    from medseg.models import build_model
    from medseg.tasks.segmentation.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_scales, deep_supervision_weights

    torch.manual_seed(0)
    network = build_model(configuration.architecture, in_channels, num_classes, deep_supervision=True)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    scales = deep_supervision_scales(configuration.architecture["kwargs"]["strides"])
    loss = DeepSupervisionLoss(DiceCELoss(configuration.batch_dice), deep_supervision_weights(len(scales)))
    patch, batch = configuration.patch_size, configuration.batch_size
    data = torch.randn(batch, in_channels, *patch)
    targets = [torch.randint(0, num_classes, (batch, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)])) for scale in scales]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(network(data), targets).backward()
        optimizer.step()

    return timed(step, repeats, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=None, help="comma-separated [default: every segmentation family]")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "planner_accuracy.json")
    args = parser.parse_args()

    from medseg.models import get_model_family, list_models
    from medseg.planning.plans import Plans

    families = args.families.split(",") if args.families else [f.name for f in list_models() if f.task_type == "segmentation"]
    root = Path(tempfile.mkdtemp(prefix="planner_accuracy_"))
    medseg("datasets", "synth", "AbdomenMRI-demo", "--num-cases", str(args.cases), root=root)
    medseg("fingerprint", "AbdomenMRI-demo", root=root)
    results = []
    for name in families:
        medseg("plan", "AbdomenMRI-demo", "--model", name, "--plans-name", f"bench_{name}", root=root)
        plans = Plans.load(next((root / "preprocessed").glob("Dataset*")) / f"bench_{name}.json")
        rates = {int(k): v * 1e9 for k, v in plans.planner["measured_gflops"].items()}
        family = get_model_family(name)
        for config_name in ("2d", "3d_fullres"):
            configuration = plans.configuration(config_name)
            channels, classes = len(plans.channel_names), plans.num_classes
            kwargs, patch, batch = configuration.architecture["kwargs"], configuration.patch_size, configuration.batch_size
            flops = family.flops_per_sample(patch, channels, classes, kwargs)
            estimated = batch * 3.0 * flops / rates[len(patch)]
            measured = measured_step_seconds(configuration, channels, classes, args.repeats)
            row = {
                "family": name, "configuration": config_name, "patch": patch, "batch": batch,
                "estimated_step_s": round(estimated, 3), "measured_step_s": round(measured, 3), "measured_over_estimated": round(measured / estimated, 2),
                "planner_target_step_s": plans.planner["step_seconds"],
                "estimated_activations_per_sample": int(family.feature_map_size(patch, channels, classes, kwargs)),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    content = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine_info(), "results": results}
    args.out.write_text(json.dumps(content, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
