"""Selective scan on CPU: forward and forward+backward time and peak memory per backend, JSON out.

    .venv/bin/python bench/kernels/selective_scan_cpu.py [--length 4096] [--ref-length 1024]

The sequential reference's backward grows superlinearly, so it is timed at --ref-length only.
Peers (mamba_ssm's selective_scan_ref) are not installed by default: not in this run yet.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from medseg_kernels.selective_scan import selective_scan


def inputs(batch, channels, length, state):
    torch.manual_seed(0)
    u = torch.randn(batch, channels, length, requires_grad=True)
    delta = (torch.rand(batch, channels, length) * 0.1).requires_grad_()
    A = (-torch.rand(channels, state) * 4).requires_grad_()
    B = torch.randn(batch, state, length, requires_grad=True)
    C = torch.randn(batch, state, length, requires_grad=True)
    return u, delta, A, B, C


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(backend, length, args):
    tensors = inputs(args.batch, args.channels, length, args.state)

    def forward():
        with torch.no_grad():
            selective_scan(*tensors, backend=backend)

    def forward_backward():
        selective_scan(*tensors, backend=backend).sum().backward()

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "backend": backend,
        "length": length,
        "forward_s": timed(forward, args.repeats),
        "forward_backward_s": timed(forward_backward, args.repeats if backend != "ref" else 1),
    }
    result["peak_rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=192)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--ref-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/selective_scan_cpu.json"))
    args = parser.parse_args()
    results = [measure("cpu", args.length, args), measure("cpu", args.ref_length, args), measure("ref", args.ref_length, args)]
    cpu_short = next(r for r in results[1:] if r["backend"] == "cpu")
    ref_short = results[2]
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "shape": {"batch": args.batch, "channels": args.channels, "state": args.state},
        "results": results,
        "speedup_vs_ref_at_ref_length": {
            "forward": ref_short["forward_s"] / cpu_short["forward_s"],
            "forward_backward": ref_short["forward_backward_s"] / cpu_short["forward_backward_s"],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
