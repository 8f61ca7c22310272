"""Kernels on a GPU: forward and forward+backward time and peak memory, medseg's Triton kernels vs the
peers' GPU kernels in the same run. JSON out with the device name.

    .venv/bin/python bench/kernels/gpu.py [--out bench/results/kernels_gpu.json]
    TRITON_INTERPRET=1 .venv/bin/python bench/kernels/gpu.py --smoke   # plumbing check on CPU, tiny shapes

Selective scan (B=2, D=192, L=4096, N=16, fp32, B/C per position; the issue's shape) and a wider one
(D=1536, a Mamba block at d_model 768):
- medseg ``triton``, medseg ``cuda`` (our adapter to mamba_ssm's kernel) and mamba_ssm's
  ``selective_scan_fn`` called directly, when mamba_ssm is installed with its CUDA extension.
mLSTM (B=2, 4 heads, S=4096, head dim 64, fp32):
- medseg ``triton`` (tiled parallel form), ``chunkwise`` (PyTorch) and ``ref`` (quadratic);
- the xlstm package's mlstm_kernels: ``chunkwise--triton_limit_chunk``, ``chunkwise--triton_xl_chunk``,
  ``parallel--triton_limit_headdim`` and ``chunkwise--native_autograd``, where they run.
A contender that fails (missing peer, unsupported shape) is recorded with its error, not fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, timed  # noqa: E402

from medseg_kernels.mlstm import mlstm  # noqa: E402
from medseg_kernels.selective_scan import selective_scan  # noqa: E402


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_on(function, device, repeats: int) -> float:
    """common.timed with the device synchronised after each call, two warm-ups (compilation, autotuning)."""

    def call():
        function()
        synchronize(device)

    return timed(call, repeats, warmup=2)


def peak_mb(function, device) -> float | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    function()
    synchronize(device)
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def measure(name, function, tensors, device, repeats) -> dict:
    def forward():
        with torch.no_grad():
            function(*tensors)

    def forward_backward():
        for t in tensors:
            t.grad = None
        function(*tensors).float().sum().backward()

    try:
        result = {
            "name": name,
            "forward_s": round(timed_on(forward, device, repeats), 6),
            "forward_backward_s": round(timed_on(forward_backward, device, repeats), 6),
            "forward_backward_peak_mb": peak_mb(forward_backward, device),
        }
    except Exception as error:  # a peer that cannot run this shape is a result, not a crash
        result = {"name": name, "error": f"{type(error).__name__}: {str(error)[:300]}"}
    print(json.dumps(result), flush=True)
    return result


def scan_contenders(device) -> dict:
    found = {"medseg triton": lambda *t: selective_scan(*t, backend="triton")}
    if device.type == "cuda":
        found["medseg cuda (mamba_ssm adapter)"] = lambda *t: selective_scan(*t, backend="cuda")
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            found["mamba_ssm selective_scan_fn"] = lambda u, delta, A, B, C: selective_scan_fn(u, delta, A, B, C)
        except ImportError as error:
            print(f"mamba_ssm not installed ({error})", file=sys.stderr)
    return found


def scan_inputs(batch, channels, length, state, device):
    generator = torch.Generator().manual_seed(0)
    tensors = (
        torch.randn(batch, channels, length, generator=generator),
        torch.rand(batch, channels, length, generator=generator) * 0.1,
        -torch.rand(channels, state, generator=generator) * 4,
        torch.randn(batch, state, length, generator=generator),
        torch.randn(batch, state, length, generator=generator),
    )
    return [t.to(device).requires_grad_() for t in tensors]


def mlstm_contenders(device) -> dict:
    found = {
        "medseg triton": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="triton"),
        "medseg chunkwise (PyTorch)": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="chunkwise"),
        "medseg ref (parallel)": lambda q, k, v, i, f: mlstm(q, k, v, i, f, backend="ref"),
    }
    try:
        from mlstm_kernels.torch import get_mlstm_kernel
    except ImportError as error:
        print(f"mlstm_kernels not installed ({error})", file=sys.stderr)
        return found
    names = ["chunkwise--native_autograd"]
    if device.type == "cuda":
        names = ["chunkwise--triton_limit_chunk", "chunkwise--triton_xl_chunk", "parallel--triton_limit_headdim", *names]
    for kernel_name in names:
        kernel = get_mlstm_kernel(kernel_name)
        chunk = 128 if "xl_chunk" in kernel_name else 64
        found[f"xlstm {kernel_name}"] = lambda q, k, v, i, f, kernel=kernel, chunk=chunk: kernel(q=q, k=k, v=v, i=i, f=f, chunk_size=chunk)
    return found


def mlstm_inputs(batch, heads, length, dim, device):
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(batch, heads, length, dim, generator=generator) for _ in range(3)]
    tensors += [torch.randn(batch, heads, length, generator=generator), torch.randn(batch, heads, length, generator=generator) + 3]
    return [t.to(device).requires_grad_() for t in tensors]


def ratios(results: list[dict], ours: str) -> dict:
    by_name = {r["name"]: r for r in results if "error" not in r}
    if ours not in by_name:
        return {}
    return {
        f"{name} / {ours}": {key: round(r[key] / by_name[ours][key], 3) for key in ("forward_s", "forward_backward_s")}
        for name, r in by_name.items()
        if name != ours
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on any device (CPU under TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/kernels_gpu.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or pass --smoke (with TRITON_INTERPRET=1) to check the plumbing")
    scale = 64 if args.smoke else 1
    scan_shapes = [(2, 192, 4096 // scale, 16), (2, 1536 // scale, 4096 // scale, 16)]
    report = {"machine": machine_info(), "command": "python bench/kernels/gpu.py " + " ".join(sys.argv[1:]), "selective_scan": [], "mlstm": []}
    for batch, channels, length, state in scan_shapes:
        tensors = scan_inputs(batch, channels, length, state, device)
        results = [measure(name, fn, tensors, device, args.repeats) for name, fn in scan_contenders(device).items()]
        shape = {"batch": batch, "channels": channels, "length": length, "state": state, "dtype": "float32"}
        report["selective_scan"].append({"shape": shape, "results": results, "time_ratio_over_medseg_triton": ratios(results, "medseg triton")})
    tensors = mlstm_inputs(2, 4, 4096 // scale, 64, device)
    results = [measure(name, fn, tensors, device, args.repeats) for name, fn in mlstm_contenders(device).items()]
    shape = {"batch": 2, "heads": 4, "length": 4096 // scale, "head_dim": 64, "dtype": "float32"}
    report["mlstm"].append({"shape": shape, "results": results, "time_ratio_over_medseg_triton": ratios(results, "medseg triton")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
