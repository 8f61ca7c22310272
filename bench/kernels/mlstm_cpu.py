"""mLSTM on CPU: forward and forward+backward time and peak memory, medseg vs the xlstm package.

    .venv/bin/python bench/kernels/mlstm_cpu.py [--length 4096] [--out bench/results/mlstm_cpu.json]

Contenders, same inputs (batch 2, 4 heads, head dim 64, float32):
- medseg ``cpu`` (chunkwise, linear in S) and ``ref`` (quadratic parallel form, what xLSTM-UNet runs);
- the xlstm package: ``parallel_stabilized_simple`` (xlstm.blocks.mlstm.backends) and mlstm_kernels'
  ``chunkwise--native_autograd`` (its fastest CPU path; its ``native_custbw`` backends return wrong
  gradients, see shared/ENVIRONMENT.md). Needs MEDSEG_EXTRAS=dev,peers; skipped when not installed.
Roofline of medseg ``cpu``: its forward does about 4 B H S (c d + d (d + 1)) matmul FLOPs (chunk c = 64:
q k^T and weights @ v inside each chunk, q @ memory and k^T v across chunks) and must move q, k, v and h
once; the limit is the larger of FLOPs / measured batched-matmul rate and bytes / measured bandwidth.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import batched_matmul_gflops, machine_info, memory_bandwidth_gb_s, peak_growth_mb, peak_memory_mb, timed  # noqa: E402

from medseg_kernels.mlstm import mlstm  # noqa: E402
from medseg_kernels.mlstm.chunkwise import DEFAULT_CHUNK  # noqa: E402


def contenders() -> dict:
    found = {
        "medseg cpu (chunkwise)": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="cpu"),
        "medseg ref (parallel)": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="ref"),
    }
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
        from xlstm.blocks.mlstm.backends import parallel_stabilized_simple
    except ImportError as error:
        print(f"xlstm peers not installed ({error}); medseg only", file=sys.stderr)
        return found
    chunkwise = get_mlstm_kernel("chunkwise--native_autograd")
    found["xlstm chunkwise--native_autograd"] = lambda q, k, v, i, f: chunkwise(q=q, k=k, v=v, i=i, f=f, chunk_size=64)
    found["xlstm parallel_stabilized_simple"] = lambda q, k, v, i, f: parallel_stabilized_simple(q, k, v, i[..., None], f[..., None])
    return found


def inputs(batch, heads, length, dim):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator, requires_grad=True) for _ in range(3))
    i = torch.randn(batch, heads, length, generator=generator).requires_grad_()
    f = (torch.randn(batch, heads, length, generator=generator) + 3).requires_grad_()
    return q, k, v, i, f


def measure(name, function, tensors, args):
    def forward():
        with torch.no_grad():
            function(*tensors)

    def forward_backward():
        function(*tensors).sum().backward()

    shape = ["--batch", str(args.batch), "--heads", str(args.heads), "--dim", str(args.dim), "--length", str(args.length)]
    return {
        "name": name,
        "forward_s": round(timed(forward, args.repeats), 4),
        "forward_backward_s": round(timed(forward_backward, args.repeats), 4),
        "forward_backward_peak_mb": peak_memory_mb(__file__, *shape, "--peak-of", name),
    }


def roofline(ours: dict, args) -> dict:
    limits = {"memory_bandwidth_gb_s": memory_bandwidth_gb_s(), "batched_matmul_gflops": batched_matmul_gflops(size=args.dim)}
    steps = args.batch * args.heads * args.length
    flops = 4 * steps * (DEFAULT_CHUNK * args.dim + args.dim * (args.dim + 1))
    bytes_moved = 4 * 4 * steps * args.dim  # q, k, v in and h out, float32
    compute_s = flops / (limits["batched_matmul_gflops"] * 1e9)
    memory_s = bytes_moved / (limits["memory_bandwidth_gb_s"] * 1e9)
    return {
        **limits, "flops": flops, "bytes": bytes_moved, "compute_bound_s": round(compute_s, 5), "memory_bound_s": round(memory_s, 5),
        "binding": "compute" if compute_s >= memory_s else "memory", "forward_fraction_of_limit": round(max(compute_s, memory_s) / ours["forward_s"], 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/mlstm_cpu.json"))
    parser.add_argument("--peak-of", help="internal: print the forward+backward peak memory of one contender")
    args = parser.parse_args()
    tensors = inputs(args.batch, args.heads, args.length, args.dim)
    if args.peak_of:
        function = contenders()[args.peak_of]
        print(json.dumps(peak_growth_mb(lambda: function(*tensors).sum().backward())))
        return
    found = contenders()
    for function in found.values():  # warm every contender first: whoever runs first would otherwise
        function(*tensors).sum().backward()  # pay the allocator's growth (page faults) for all of them
    results = []
    for name, function in found.items():
        results.append(measure(name, function, tensors, args))
        print(json.dumps(results[-1]), flush=True)
    by_name = {r["name"]: r for r in results}
    ours = by_name["medseg cpu (chunkwise)"]
    ratios = {
        f"{other} / medseg cpu": {
            "forward": round(r["forward_s"] / ours["forward_s"], 2),
            "forward_backward": round(r["forward_backward_s"] / ours["forward_backward_s"], 2),
        }
        for other, r in by_name.items()
        if r is not ours
    }
    report = {
        "machine": machine_info(),
        "shape": {"batch": args.batch, "heads": args.heads, "length": args.length, "head_dim": args.dim, "dtype": "float32"},
        "command": "python bench/kernels/mlstm_cpu.py " + " ".join(sys.argv[1:]),
        "results": results,
        "time_ratio_other_over_medseg_cpu": ratios,
        "roofline_medseg_cpu": roofline(ours, args),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"ratios": ratios, "roofline": report["roofline_medseg_cpu"]}, indent=2))


if __name__ == "__main__":
    main()
