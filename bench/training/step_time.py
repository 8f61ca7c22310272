"""One training step of every 3D segmentation family, in each engine mode, on this CPU; JSON out.

    .venv/bin/python bench/training/step_time.py [--batch 2] [--patch 40 56 32] [--features 16 128] [--models unet,resenc_unet,umamba_bot,umamba_enc,xlstm_unet_bot,xlstm_unet_enc]
        [--modes float32,bfloat16,bfloat16-cl,bfloat16-compile,float32-compile] [--steps 8]
        [--out bench/results/training_step_modes.json]

A step is what the trainer does: zero-grad, the forward under the mode's autocast, the deep-
supervised Dice + CE loss in float32, backward, gradient clipping, SGD with Nesterov momentum.
Modes: ``float32``; ``bfloat16`` (autocast forward, float32 weights, optimizer and loss: medseg's
``--precision bfloat16``); ``-cl``: network and input in channels_last_3d; ``-compile``: the network
under ``torch.compile`` (inductor; the first steps, compilation included, are reported apart).
Each family is sized by its own planner hook for the patch at 1 mm spacing, 16 to 128 features (the
Hippocampus's CPU plan: batch 2 at 40 x 56 x 32), random data, a fixed seed. Reports the median seconds of ``--steps`` timed steps after two warm-up steps, each mode's
speed-up over float32 eager, and the matmul peaks of this machine (roofline). Run it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info, roofline  # noqa: E402

FAMILIES = "unet,resenc_unet,umamba_bot,umamba_enc,xlstm_unet_bot,xlstm_unet_enc"
MODES = "float32,bfloat16,bfloat16-cl,bfloat16-compile"
NUM_CLASSES = 3  # the Hippocampus: background, anterior, posterior


def architecture(family: str, patch: list[int], features: list[int]) -> tuple[dict, list[int]]:
    """The family's architecture for the patch, as its planner hook sizes it; -> (architecture, patch)."""
    from medseg.models.registry import get_model_family

    kwargs, topology = get_model_family(family).architecture_for_patch([1.0] * len(patch), patch, features[0], features[1])
    return {"name": family, "kwargs": kwargs}, list(topology.patch_size)


def step_seconds(family: str, mode: str, patch: list[int], batch: int, features: list[int], steps: int) -> dict:
    from medseg.models.registry import build_model
    from medseg.precision import autocast
    from medseg.tasks.segmentation.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_scales, deep_supervision_weights

    torch.manual_seed(0)
    arch, patch = architecture(family, patch, features)
    network = build_model(arch, 1, NUM_CLASSES, deep_supervision=True)
    scales = deep_supervision_scales(arch["kwargs"]["strides"])
    loss_function = DeepSupervisionLoss(DiceCELoss(batch_dice=False), deep_supervision_weights(len(scales)))
    precision = "bfloat16" if mode.startswith("bfloat16") else "float32"
    data = torch.randn(batch, 1, *patch)
    targets = [torch.randint(0, NUM_CLASSES, (batch, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)])).float() for scale in scales]
    if "-cl" in mode:
        network = network.to(memory_format=torch.channels_last_3d)
        data = data.contiguous(memory_format=torch.channels_last_3d)
    model = torch.compile(network) if "-compile" in mode else network
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    times = []
    for _ in range(2 + steps):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(torch.device("cpu"), precision):
            outputs = model(data)
        loss = loss_function([o.float() for o in outputs], targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        optimizer.step()
        times.append(time.perf_counter() - started)
    return {"seconds": round(statistics.median(times[2:]), 4), "first_steps_seconds": [round(t, 2) for t in times[:2]], "loss": round(float(loss), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 32])
    parser.add_argument("--features", type=int, nargs=2, default=[16, 128], help="first stage's and largest features")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", default=FAMILIES)
    parser.add_argument("--modes", default=MODES)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "training_step_modes.json")
    args = parser.parse_args()
    patch = args.patch
    results = {}
    for family in args.models.split(","):
        results[family] = {}
        for mode in args.modes.split(","):
            try:
                results[family][mode] = step_seconds(family, mode, patch, args.batch, args.features, args.steps)
            except Exception as error:  # noqa: BLE001 - a mode a family cannot run is reported, the others go on
                results[family][mode] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
            base = results[family].get("float32", {}).get("seconds")
            entry = results[family][mode]
            if base and "seconds" in entry:
                entry["speedup_over_float32"] = round(base / entry["seconds"], 3)
            print(family, mode, entry, flush=True)
    content = {
        "command": "python bench/training/step_time.py " + " ".join(sys.argv[1:]), "machine": machine_info(), "roofline": roofline(),
        "patch": patch, "batch": args.batch, "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(content, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
