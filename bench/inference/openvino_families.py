"""Which segmentation families run compiled by OpenVINO (``--runtime openvino``); JSON out.

    .venv/bin/python bench/inference/openvino_families.py [--patch 32 48 32] [--out bench/results/openvino_families.json]

Each registered 3D segmentation family is sized by its planner hook for the patch (16 to 128
features), given random weights, converted exactly as ``--runtime openvino`` converts a fold
(medseg.inference.openvino_runtime: in memory, checked against PyTorch float32 on a random window,
refused beyond 1e-4 of the logit range), in float32 and with the bf16 hint; reported per family: converted or the
converter's refusal, the largest logit difference, label agreement, and one window's seconds in
PyTorch eager and OpenVINO. Run it alone."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info  # noqa: E402


def seconds(call, repeats: int = 3) -> float:
    call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return round((time.perf_counter() - started) / repeats, 4)


def main() -> None:
    from medseg.errors import MedsegError
    from medseg.inference.openvino_runtime import openvino_network
    from medseg.models.registry import build_model, list_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 48, 32])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "openvino_families.json")
    args = parser.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="openvino-families-")  # a conversion each, never a cached one
    families = [f for f in list_models() if f.task_type == "segmentation" and 3 in f.dims and f.architecture_for_patch]
    results = {}
    for family in families:
        kwargs, topology = family.architecture_for_patch([1.0, 1.0, 1.0], args.patch, 16, 128)
        patch = list(topology.patch_size)
        torch.manual_seed(0)
        network = build_model({"name": family.name, "kwargs": kwargs}, 1, 3).eval()
        window = torch.randn(1, 1, *patch)
        with torch.inference_mode():
            entry = {"patch": patch, "torch_float32_seconds": seconds(lambda: network(window))}
        for precision in ("float32", "bfloat16"):
            try:
                compiled = openvino_network(network, (1, 1, *patch), precision, family.name)
            except MedsegError as error:
                entry[precision] = {"converted": False, "why": str(error)}
                continue
            check = json.loads((compiled.folder / "check.json").read_text())
            entry[precision] = {"converted": True, **{k: check[k] for k in ("max_logit_difference", "logit_range", "label_agreement")},
                                "openvino_seconds": seconds(lambda: compiled(window))}
        results[family.name] = entry
        print(family.name, json.dumps(entry), flush=True)
    content = {"command": "python bench/inference/openvino_families.py " + " ".join(sys.argv[1:]), "machine": machine_info(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(content, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
