"""Selective scan on CPU: forward and forward+backward time and peak memory, medseg vs mamba_ssm's
``selective_scan_ref`` in the same run, plus the roofline fraction. JSON out.

    .venv/bin/python bench/kernels/selective_scan_cpu.py [--length 4096] [--ref-length 1024]

Shape: B=2, D=192, N=16, fp32, B and C varying per position (as Mamba uses them).
- medseg ``numba`` (what ``auto`` picks on CPU) and ``cpu`` (PyTorch, the fallback without numba) at
  --length; ``numba`` and ``ref`` (sequential) at --ref-length.
- mamba_ssm's ``selective_scan_ref`` (a peer, not a dependency: ``MAMBA_SKIP_CUDA_BUILD=TRUE
  MAMBA_FORCE_BUILD=TRUE pip install --no-build-isolation mamba-ssm``) at --length; its backward
  takes minutes there, so it is timed once. Skipped when not installed.
- Roofline: the forward must move the inputs and the output once (bytes) and do about 9 B L D N
  floating-point operations (decay multiply and exp, input product, state update, output product);
  the limit is the larger of bytes / measured memory bandwidth and FLOPs / measured elementwise
  multiply-add rate, and the fraction reported is that limit / measured time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, memory_bandwidth_gb_s, peak_growth_mb, peak_memory_mb, timed  # noqa: E402

from medseg_kernels.selective_scan import selective_scan  # noqa: E402


def mamba_ref():
    """mamba_ssm's selective_scan_ref, or None. Its package imports the CUDA extension at import
    time, so a stand-in module is registered when the extension is absent (CPU machines)."""
    try:
        sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    except ImportError as error:
        print(f"mamba_ssm not installed ({error}): medseg only", file=sys.stderr)
        return None
    return selective_scan_ref


def contenders() -> dict:
    found = {
        "medseg numba": lambda *t: selective_scan(*t, backend="numba"),
        "medseg cpu": lambda *t: selective_scan(*t, backend="cpu"),
        "medseg ref": lambda *t: selective_scan(*t, backend="ref"),
    }
    peer = mamba_ref()
    if peer is not None:
        found["mamba_ssm selective_scan_ref"] = peer
    return found


def inputs(batch, channels, length, state):
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(batch, channels, length, generator=generator, requires_grad=True)
    delta = (torch.rand(batch, channels, length, generator=generator) * 0.1).requires_grad_()
    A = (-torch.rand(channels, state, generator=generator) * 4).requires_grad_()
    B = torch.randn(batch, state, length, generator=generator, requires_grad=True)
    C = torch.randn(batch, state, length, generator=generator, requires_grad=True)
    return u, delta, A, B, C


def measure(name, function, length, args, repeats_backward):
    tensors = inputs(args.batch, args.channels, length, args.state)

    def forward():
        with torch.no_grad():
            function(*tensors)

    def forward_backward():
        function(*tensors).sum().backward()

    shape = ["--batch", str(args.batch), "--channels", str(args.channels), "--state", str(args.state), "--length", str(length)]
    result = {"name": name, "length": length, "forward_s": round(timed(forward, args.repeats), 4)}
    result["forward_backward_s"] = round(timed(forward_backward, repeats_backward, warmup=0 if repeats_backward == 1 else 1), 4)
    if repeats_backward > 1:  # a single slow run is not worth repeating in a child for its peak
        result["forward_backward_peak_mb"] = peak_memory_mb(__file__, *shape, "--peak-of", name)
    print(json.dumps(result), flush=True)
    return result


def machine_limits() -> dict:
    """Memory bandwidth (a large copy) and elementwise multiply-add rate (cache-resident addcmul)."""
    state = torch.randn(2 * 192 * 16)  # the (batch, D, N) state of the benchmark shape
    a, b = torch.randn_like(state), torch.randn_like(state)
    steps = 20000
    start = time.perf_counter()
    for _ in range(steps):
        torch.addcmul(b, a, state, out=state)
    fma_rate = 2 * state.numel() * steps / (time.perf_counter() - start)
    return {"memory_bandwidth_gb_s": memory_bandwidth_gb_s(), "elementwise_gflops": round(fma_rate / 1e9, 2)}


def roofline(result: dict, args, limits: dict) -> dict:
    batch, channels, state, length = args.batch, args.channels, args.state, result["length"]
    bytes_moved = 4 * (3 * batch * channels * length + 2 * batch * state * length + channels * state)  # u, delta, y; B, C; A
    flops = 9 * batch * length * channels * state
    memory_s = bytes_moved / (limits["memory_bandwidth_gb_s"] * 1e9)
    compute_s = flops / (limits["elementwise_gflops"] * 1e9)
    limit_s = max(memory_s, compute_s)
    return {
        "bytes": bytes_moved, "flops": flops, "memory_bound_s": round(memory_s, 5), "compute_bound_s": round(compute_s, 5),
        "binding": "compute" if compute_s >= memory_s else "memory", "forward_fraction_of_limit": round(limit_s / result["forward_s"], 3),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=192)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--ref-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/selective_scan_cpu.json"))
    parser.add_argument("--peak-of", help="internal: print the forward+backward peak memory of one contender")
    args = parser.parse_args()
    found = contenders()
    if args.peak_of:
        tensors = inputs(args.batch, args.channels, args.length, args.state)
        print(json.dumps(peak_growth_mb(lambda: found[args.peak_of](*tensors).sum().backward())))
        return
    for name in ("medseg numba", "medseg cpu"):  # compile / warm the fast paths before any timing
        found[name](*inputs(args.batch, args.channels, 64, args.state)).sum().backward()
    results = {
        "numba": measure("medseg numba", found["medseg numba"], args.length, args, args.repeats),
        "cpu": measure("medseg cpu", found["medseg cpu"], args.length, args, args.repeats),
        "numba_short": measure("medseg numba", found["medseg numba"], args.ref_length, args, args.repeats),
        "ref_short": measure("medseg ref", found["medseg ref"], args.ref_length, args, 1),
    }
    peer = "mamba_ssm selective_scan_ref"
    if peer in found:
        results["peer"] = measure(peer, found[peer], args.length, args, 1)
    limits = machine_limits()
    ours = results["numba"]  # what backend="auto" runs on CPU

    def speedup(other, mine):
        return {"forward": round(other["forward_s"] / mine["forward_s"], 1), "forward_backward": round(other["forward_backward_s"] / mine["forward_backward_s"], 1)}

    report = {
        "machine": {**machine_info(), **limits},
        "shape": {"batch": args.batch, "channels": args.channels, "state": args.state, "dtype": "float32", "B_C": "varying (batch, N, L)"},
        "command": "python bench/kernels/selective_scan_cpu.py " + " ".join(sys.argv[1:]),
        "results": list(results.values()),
        "roofline_medseg_numba": roofline(ours, args, limits),
        "roofline_medseg_cpu": roofline(results["cpu"], args, limits),
        "speedup_numba_vs_cpu": speedup(results["cpu"], ours),
        "speedup_vs_medseg_ref_at_ref_length": speedup(results["ref_short"], results["numba_short"]),
    }
    if "peer" in results:
        report["speedup_vs_mamba_ssm_ref"] = speedup(results["peer"], ours)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
