"""xLSTM-UNet training steps on the chunkwise mLSTM kernel vs the quadratic parallel form: JSON out.

    .venv/bin/python bench/models/xlstm_unet_backends.py [--model xlstm_unet_enc] [--patch 32 32 32]
        [--batch 1] [--base-features 16] [--out bench/results/xlstm_unet_backends.json]

The same network (same weights) trains with its ViL layers on the `cpu` backend (chunkwise, linear
in tokens: auto's choice here) and on `ref`, the quadratic parallel form that the published
xLSTM-UNet code runs. With the default 3D patch of 32^3 the Enc model's first ViL layer sees
16^3 = 4096 tokens. Time: median of training steps (forward, deep-supervised loss, backward, AdamW);
peak memory: growth of resident memory during one step, measured in a fresh process each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info, peak_growth_mb, peak_memory_mb, timed  # noqa: E402

BACKENDS = ("cpu", "ref")


def training_step(model: str, patch: list[int], batch: int, base_features: int, backend: str):
    """A closure running one training step, and the ViL layers' token counts."""
    from medseg.models import build_model, get_model_family
    from medseg.models.vil_layer import ViLLayer
    from medseg.tasks.segmentation.training.losses import DeepSupervisionLoss, DiceCELoss, deep_supervision_scales, deep_supervision_weights

    kwargs, topology = get_model_family(model).architecture_for_patch([1.0] * len(patch), patch, base_features=base_features)
    torch.manual_seed(0)
    network = build_model({"name": model, "kwargs": kwargs}, 1, 3, deep_supervision=True)
    layers = [m for m in network.modules() if isinstance(m, ViLLayer)]
    for layer in layers:
        layer.backend = backend
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    scales = deep_supervision_scales(kwargs["strides"])
    loss = DeepSupervisionLoss(DiceCELoss(False), deep_supervision_weights(len(scales)))
    data = torch.randn(batch, 1, *topology.patch_size)
    targets = [torch.randint(0, 3, (batch, 1, *[max(1, round(p * s)) for p, s in zip(topology.patch_size, scale)])) for scale in scales]
    tokens = []
    hook = lambda module, inputs, output: tokens.append(int(inputs[0][0, 0].numel()))  # noqa: E731
    handles = [layer.register_forward_hook(hook) for layer in layers]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(network(data), targets).backward()
        optimizer.step()

    step()
    for handle in handles:
        handle.remove()
    return step, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="xlstm_unet_enc")
    parser.add_argument("--patch", type=int, nargs="+", default=[32, 32, 32])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--base-features", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "xlstm_unet_backends.json")
    parser.add_argument("--peak-of", choices=BACKENDS, help="internal: print one step's peak memory growth (MB) on this backend")
    args = parser.parse_args()
    if args.peak_of:
        step, _ = training_step(args.model, args.patch, args.batch, args.base_features, args.peak_of)
        print(json.dumps(peak_growth_mb(step)))
        return
    results = {}
    for backend in BACKENDS:
        step, tokens = training_step(args.model, args.patch, args.batch, args.base_features, backend)
        seconds = timed(step, args.repeats, warmup=1)
        peak = peak_memory_mb(
            __file__, "--peak-of", backend, "--model", args.model, "--patch", *map(str, args.patch), "--batch", str(args.batch),
            "--base-features", str(args.base_features),
        )
        results[backend] = {"step_s": round(seconds, 3), "peak_growth_mb": peak, "vil_tokens": tokens}
        print(backend, json.dumps(results[backend]), flush=True)
    report = {
        "command": "python bench/models/xlstm_unet_backends.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "model": args.model, "patch": args.patch, "batch": args.batch, "base_features": args.base_features,
        "results": results,
        "ref_over_cpu": {"time": round(results["ref"]["step_s"] / results["cpu"]["step_s"], 2), "peak_memory": round(results["ref"]["peak_growth_mb"] / max(results["cpu"]["peak_growth_mb"], 1e-9), 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["ref_over_cpu"]))


if __name__ == "__main__":
    main()
