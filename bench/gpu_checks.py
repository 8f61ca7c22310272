"""Checks that need a GPU, in one short run: kernel correctness on CUDA, every segmentation family's
training step on CUDA (against the same network on CPU), and sliding-window inference on CUDA.

    python bench/gpu_checks.py [--parts kernels,models,inference] [--out-dir bench/results]
    TRITON_INTERPRET=1 .venv/bin/python bench/gpu_checks.py --smoke   # plumbing check on CPU, tiny sizes

Writes ``gpu_kernel_correctness.json``, ``gpu_models.json`` and ``gpu_inference.json``:
- kernels: every registered backend that can run on CUDA (Triton's, the portable ones) against the
  op's reference on CUDA, outputs and gradients, fp32 and bf16, lengths from 1 to 4096; and which
  backend ``auto`` picks for CUDA tensors.
- models: each segmentation family (auto dispatch, so Triton kernels on CUDA) at a tiny patch: logits
  and gradients on CUDA against the same weights on CPU (CPU kernels), then seconds and peak memory
  of one training step at a realistic patch, float32 and bf16 autocast.
- inference: medseg's sliding window with a 3D U-Net (patch 96^3) over a 224 x 202 x 244 volume,
  float32 and bf16 autocast, 1 and 4 windows per forward: seconds, peak GPU memory, and the
  fraction of voxels whose label differs from float32's.
Each case that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info  # noqa: E402


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1.0))


def guarded(record: dict, function) -> dict:
    try:
        record.update(function())
    except Exception as error:  # one failing case is a result, not the end of the run
        record["error"] = f"{type(error).__name__}: {str(error)[:400]}"
        traceback.print_exc()
    print(json.dumps(record), flush=True)
    return record


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_peak(function, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Median seconds over ``repeats`` calls after one warm-up; peak memory above the start in MB."""
    function()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    peak = round((torch.cuda.max_memory_allocated() - base) / 2**20, 1) if device.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak


# ---------------------------------------------------------------- kernels


def scan_case(layout: str, length: int, dtype, device, channels=16, state=8, groups=2):
    generator = torch.Generator().manual_seed(length)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    u, delta = randn(2, channels, length), torch.rand(2, channels, length, generator=generator) * 0.5
    A = -torch.rand(channels, state, generator=generator) * 2
    if layout == "varying":
        B, C = randn(2, state, length), randn(2, state, length)
    elif layout == "grouped":
        B, C = randn(2, groups, state, length), randn(2, groups, state, length)
    else:
        B, C = randn(channels, state), randn(channels, state)
    tensors = [t.to(device) for t in (u.to(dtype), delta.to(dtype), A, B.to(dtype), C.to(dtype))]
    extras = {k: v.to(device) for k, v in dict(D=randn(channels), z=randn(2, channels, length), delta_bias=randn(channels) * 0.1).items()}
    return [t.requires_grad_() for t in tensors], {k: v.requires_grad_() for k, v in extras.items()}


def run_scan(backend: str, tensors, extras) -> list[torch.Tensor]:
    from medseg_kernels.selective_scan import selective_scan

    for t in tensors + list(extras.values()):
        t.grad = None
    y, last = selective_scan(*tensors, **extras, delta_softplus=True, return_last_state=True, backend=backend)
    (y.float().sin().sum() + last.cos().sum()).backward()
    return [y.detach().float(), last.detach()] + [t.grad.float().clone() for t in tensors + list(extras.values())]


def mlstm_case(length: int, dtype, device, heads=3, dim=32):
    """q, k, v: (2, heads, length, dim); gates (2, heads, length)."""
    generator = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, heads, length, dim, generator=generator) for _ in range(3))
    i = torch.randn(2, heads, length, generator=generator)
    f = torch.randn(2, heads, length, generator=generator) + 3
    return [t.to(device, dtype).requires_grad_() for t in (q, k, v, i, f)]


def run_mlstm(backend: str, tensors) -> list[torch.Tensor]:
    from medseg_kernels.mlstm import mlstm

    for t in tensors:
        t.grad = None
    h = mlstm(*tensors, backend=backend)
    h.float().sin().sum().backward()
    return [h.detach().float()] + [t.grad.float().clone() for t in tensors]


def compare_backend(op, backend, dtype, length, variant, names, device) -> dict:
    """The backend against the reference on the same device and, from length 300, against the
    reference on CPU too (the CPU reference's float32 rounding differs: it bounds what 'exact' means)."""
    if op == "selective_scan":
        tensors, extras = scan_case(variant, length, dtype, device)

        def run(name, where):
            moved = [t.detach().to(where).requires_grad_() for t in tensors]
            return run_scan(name, moved, {k: v.detach().to(where).requires_grad_() for k, v in extras.items()})
    else:
        tensors = mlstm_case(length, dtype, device, dim=variant)

        def run(name, where):
            return run_mlstm(name, [t.detach().to(where).requires_grad_() for t in tensors])

    want, got = run("ref", device), run(backend, device)
    errors = {name: round(relative_error(g, w), 8) for name, g, w in zip(names, got, want)}
    found = {"max_relative_error": max(errors.values()), "relative_errors": errors}
    if device.type != "cpu" and length >= 300:
        on_cpu = run("ref", "cpu")
        found["max_relative_error_vs_cpu_ref"] = round(max(relative_error(g, w) for g, w in zip(got, on_cpu)), 8)
        found["device_ref_vs_cpu_ref"] = round(max(relative_error(g, w) for g, w in zip(want, on_cpu)), 8)
    return found


def kernel_checks(device: torch.device, smoke: bool) -> dict:
    import medseg_kernels.mlstm  # noqa: F401  (registers the op's backends)
    import medseg_kernels.selective_scan  # noqa: F401  (registers the op's backends)
    from medseg_kernels.registry import backends, resolve

    scan_names = ["y", "last_state", "du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias"]
    mlstm_names = ["h", "dq", "dk", "dv", "di", "df"]
    lengths = [1, 37, 300] if smoke else [1, 37, 300, 4096]
    report = {"auto": {op: {str(dtype): resolve(op, "auto", device, dtype).name for dtype in (torch.float32, torch.bfloat16)} for op in ("selective_scan", "mlstm")}}
    cases = []
    for op, names in (("selective_scan", scan_names), ("mlstm", mlstm_names)):
        runnable = [b.name for b in backends(op) if b.name != "ref" and b.unavailable_reason(device, torch.float32) is None]
        for backend in runnable:
            for dtype in (torch.float32, torch.bfloat16):
                for length in lengths if dtype == torch.float32 else [300]:
                    if op == "selective_scan":
                        variants = ["varying", "grouped", "invariant"] if dtype == torch.float32 else ["varying"]
                    else:  # head dimensions: 32, and 160 as in xLSTM-UNet's bottleneck (320 channels x 2 / 4 heads)
                        variants = [32, 160] if dtype == torch.float32 and length >= 300 else [32]
                    for variant in variants:
                        record = {"op": op, "backend": backend, "dtype": str(dtype), "length": length}
                        record["layout" if op == "selective_scan" else "head_dim"] = variant
                        cases.append(guarded(record, lambda op=op, backend=backend, dtype=dtype, length=length, variant=variant, names=names: compare_backend(
                            op, backend, dtype, length, variant, names, device)))
    report["cases"] = cases
    return report


# ---------------------------------------------------------------- models


def model_checks(device: torch.device, smoke: bool) -> dict:
    from medseg.models import build_model, list_models

    tiny = {2: ((1.0, 1.0), (32, 32)), 3: ((2.0, 1.0, 1.0), (8, 32, 32))}
    real = {2: ((1.0, 1.0), (256, 256)), 3: ((1.0, 1.0, 1.0), (96, 96, 96))}
    if smoke:
        real = tiny
    results = []
    for family in list_models():
        if family.task_type != "segmentation" or family.architecture_for_patch is None:
            continue
        for ndim in family.dims:
            record = {"model": family.name, "dims": ndim}

            def check(family=family, ndim=ndim):
                spacing, patch = tiny[ndim]
                kwargs, topology = family.architecture_for_patch(spacing, patch, base_features=8)
                torch.manual_seed(0)
                network = build_model({"name": family.name, "kwargs": kwargs}, 1, 3, deep_supervision=True)
                x = torch.randn(2, 1, *topology.patch_size)
                outputs = {}
                torch.backends.cudnn.allow_tf32 = False  # compare float32 with float32 (TF32 convolutions are cuDNN's default)
                for where in ("cpu", device.type):
                    network.to(where).zero_grad()
                    logits = network(x.to(where))
                    sum(o.float().sin().sum() for o in logits).backward()
                    outputs[where] = [logits[0].detach().cpu()] + [p.grad.detach().cpu().clone() for p in network.parameters() if p.grad is not None]
                errors = [relative_error(g, w) for g, w in zip(outputs[device.type], outputs["cpu"])]
                found = {"cuda_vs_cpu_logits": round(errors[0], 8), "cuda_vs_cpu_max_gradient": round(max(errors[1:]), 8)}
                torch.backends.cudnn.allow_tf32 = True  # training runs with cuDNN's default

                spacing, patch = real[ndim]
                kwargs, topology = family.architecture_for_patch(spacing, patch)
                network = build_model({"name": family.name, "kwargs": kwargs}, 1, 3, deep_supervision=True).to(device)
                optimizer = torch.optim.SGD(network.parameters(), 1e-3, momentum=0.9)
                batch = torch.randn(2, 1, *topology.patch_size, device=device)
                found["patch"] = list(topology.patch_size)
                for precision in ("float32", "bfloat16"):
                    def step():
                        optimizer.zero_grad(set_to_none=True)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                            loss = sum(o.float().pow(2).mean() for o in network(batch))
                        loss.backward()
                        optimizer.step()

                    seconds, peak = timed_peak(step, device, repeats=2 if smoke else 5)
                    found[f"train_step_s_{precision}"] = round(seconds, 4)
                    found[f"train_step_peak_mb_{precision}"] = peak
                return found

            results.append(guarded(record, check))
    return {"batch": 2, "results": results}


# ---------------------------------------------------------------- inference


def inference_checks(device: torch.device, smoke: bool) -> dict:
    from medseg.tasks.segmentation.inference.sliding_window import predict_logits
    from medseg.models import build_model, get_model_family

    shape, patch = ((40, 36, 44), [16, 16, 16]) if smoke else ((224, 202, 244), [96, 96, 96])
    kwargs, _ = get_model_family("unet").architecture_for_patch([1.0] * 3, patch, base_features=16)
    torch.manual_seed(0)
    network = build_model({"name": "unet", "kwargs": kwargs}, 1, 3).eval().to(device)
    data = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    results, labels = [], {}
    for precision in ("float32", "bfloat16"):
        for windows in (1, 4):
            record = {"precision": precision, "windows_per_batch": windows, "shape": list(shape), "patch": patch}

            def run(precision=precision, windows=windows):
                output = {}

                def predict():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                        output["logits"] = predict_logits(network, data, patch, 3, windows_per_batch=windows, device=device)

                seconds, peak = timed_peak(predict, device, repeats=1 if smoke else 3)
                labels[(precision, windows)] = output["logits"].argmax(0)
                found = {"seconds": round(seconds, 4), "peak_gpu_mb": peak}
                if (precision, windows) != ("float32", 1):
                    found["label_disagreement_vs_float32"] = float((labels[(precision, windows)] != labels[("float32", 1)]).float().mean())
                return found

            results.append(guarded(record, run))
    return {"network": "unet, base features 16, random weights (seed 0)", "results": results}


PARTS = {"kernels": (kernel_checks, "gpu_kernel_correctness.json"), "models": (model_checks, "gpu_models.json"), "inference": (inference_checks, "gpu_inference.json")}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (CPU under TRITON_INTERPRET=1)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        sys.exit("no CUDA device: run on a GPU machine, or pass --smoke (with TRITON_INTERPRET=1) to check the plumbing")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        function, filename = PARTS[part]
        started = time.perf_counter()
        report = {"machine": machine_info(), "command": "python bench/gpu_checks.py " + " ".join(sys.argv[1:]), **function(device, args.smoke)}
        report["wall_s"] = round(time.perf_counter() - started, 1)
        (args.out_dir / filename).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out_dir / filename} ({report['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
