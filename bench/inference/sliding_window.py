"""Sliding-window inference: medseg against MONAI's ``sliding_window_inference`` and nnU-Net v2's
predictor, on the same network weights, volume, patch, overlap 0.5 and gaussian blending
(sigma = patch / 8), no mirroring, in one run; JSON out.

    .venv/bin/python bench/inference/sliding_window.py [--dims 3] [--patch 96 96 96] [--features 16]
        [--windows-per-batch 1] [--tools medseg,medseg-bf16,medseg-openvino,medseg-openvino-bf16,monai,monai-bf16,nnunet,nnunet-bf16,medseg-onnx,medseg-cl] [--out bench/results/inference_sliding_window_3d.json]

3D volume: the shared TotalSegmentator CT (122 x 101 x 112 at 3 mm) resampled to 1.5 mm
(244 x 202 x 224 voxels, z-scored). 2D image: the largest DSB2018 image. The network is medseg's
plain U-Net for the patch (nnU-Net's topology rules), random weights with a fixed seed, saved once
and loaded by every tool. Each tool runs in a fresh process (so its peak resident memory is its
own): wall seconds of one prediction after a warm-up window, peak resident memory growth, and the
largest absolute difference of its logits from medseg's. Window placement: medseg and nnU-Net
spread windows evenly (same positions); MONAI steps by patch x (1 - overlap) and aligns the last
window to the end, so its logits differ where different windows overlap (reported, not hidden).
Precision: every tool runs in float32 unless its name ends in ``-bf16`` (torch tools: bf16
autocast; ``medseg-openvino-bf16``: OpenVINO's bf16 hint), and each tool's speedup is reported
against each peer at the same precision. ``medseg-cl`` is medseg with channels-last convolutions;
``medseg-onnx`` runs the network exported to ONNX by ONNX Runtime (``medseg predict --runtime
onnx``) and ``medseg-openvino`` compiled by OpenVINO (``--runtime openvino``); exports and
conversions happen before the clock starts. Roofline: the run measures this machine's float32 and
bf16 matmul peaks, and each tool's achieved forward GFLOP/s (medseg's window count x the network's
FLOPs per window / seconds; MONAI places a few more windows, so its rate is slightly understated)
is reported as a fraction of the peak of its precision. Run it alone: two cores, and the timing is
wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "kernels"))
from common import machine_info, peak_growth_mb, roofline  # noqa: E402

SHARED = Path(os.environ.get("MEDSEG_SHARED_DATA", REPO.parent / "shared" / "data"))
NUM_CLASSES = 3


def load_input(dims: int) -> np.ndarray:
    """(1, *S) float32, z-scored."""
    from medseg.io import read_image

    if dims == 3:
        from scipy import ndimage

        image = read_image(SHARED / "ct-mr-totalsegmentator" / "example_ct.nii.gz")
        array = ndimage.zoom(image.array[0].astype(np.float32), [s / 1.5 for s in image.spacing], order=1)
    else:
        pngs = sorted((SHARED / "microscopy-dsb2018" / "stage1_train").glob("*/images/*.png"))
        images = [read_image(p) for p in pngs]
        largest = max(images, key=lambda i: int(np.prod(i.spatial_shape)))
        array = largest.array.astype(np.float32).mean(axis=0)
    array = (array - array.mean()) / max(float(array.std()), 1e-6)
    return np.ascontiguousarray(array[None], dtype=np.float32)


def build_network(patch: list[int], features: int) -> torch.nn.Module:
    from medseg.models import build_model, get_model_family

    kwargs, _ = get_model_family("unet").architecture_for_patch([1.0] * len(patch), patch, base_features=features)
    torch.manual_seed(0)
    return build_model({"name": "unet", "kwargs": kwargs}, 1, NUM_CLASSES).eval()


def precision_of(tool: str) -> str:
    return "bfloat16" if tool.endswith("-bf16") else "float32"


def run_tool(tool: str, data: torch.Tensor, network, patch: list[int], windows_per_batch: int) -> torch.Tensor:
    base = tool.removesuffix("-bf16")
    torch_bf16 = precision_of(tool) == "bfloat16" and base != "medseg-openvino"  # OpenVINO's precision is its compile hint
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=torch_bf16):
        return _run_tool(base, data, network, patch, windows_per_batch)


def _run_tool(tool: str, data: torch.Tensor, network, patch: list[int], windows_per_batch: int) -> torch.Tensor:
    if tool in ("medseg", "medseg-cl", "medseg-onnx", "medseg-openvino"):
        from medseg.tasks.segmentation.inference.sliding_window import predict_logits

        if tool == "medseg-cl":  # channels-last memory format for the convolutions
            network = network.to(memory_format=torch.channels_last_3d if data.ndim == 4 else torch.channels_last)
        return predict_logits(network, data, patch, NUM_CLASSES, step_fraction=0.5, windows_per_batch=windows_per_batch).float()
    if tool == "monai":
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            return sliding_window_inference(
                data[None], roi_size=patch, sw_batch_size=windows_per_batch, predictor=network, overlap=0.5, mode="gaussian",
                sigma_scale=0.125, padding_mode="constant",
            )[0].float()
    if tool == "nnunet":
        from types import SimpleNamespace

        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, perform_everything_on_device=False,
                                    device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        # the parts of a trained model folder its sliding window reads (the same network, patch and classes)
        predictor.network = network
        predictor.configuration_manager = SimpleNamespace(patch_size=list(patch))
        predictor.label_manager = SimpleNamespace(num_segmentation_heads=NUM_CLASSES)
        predictor.allowed_mirroring_axes = None
        if data.ndim == 3:  # nnU-Net takes 2D images as (C, 1, Y, X) and slides its 2D network over the slices
            return predictor.predict_sliding_window_return_logits(data[:, None]).float()[:, 0]
        return predictor.predict_sliding_window_return_logits(data).float()
    raise SystemExit(f"unknown tool {tool}")


def onnx_network(network: torch.nn.Module, args):
    """The network exported as `medseg export` does, loaded as `predict --runtime onnx` does."""
    from medseg.inference.onnx_export import OPSET, OnnxNetwork, export_network

    target = args.work / "network.onnx"
    if not target.is_file():
        export_network(network, torch.randn(2, 1, *args.patch), target, OPSET, "unet")
    return OnnxNetwork(target, threads=args.threads)


def worker(args) -> None:
    """One tool in this fresh process: time, peak memory growth, logits saved for comparison."""
    torch.set_num_threads(args.threads)
    data = torch.from_numpy(np.load(args.work / "input.npy"))
    network = build_network(args.patch, args.features)
    network.load_state_dict(torch.load(args.work / "network.pt", weights_only=True))
    if args.worker == "medseg-onnx":
        network = onnx_network(network, args)
    if args.worker.startswith("medseg-openvino"):  # converted (and cached in the work folder) before the clock starts
        from medseg.inference.openvino_runtime import openvino_network

        os.environ["XDG_CACHE_HOME"] = str(args.work / "cache")
        network = openvino_network(network, (1, 1, *args.patch), precision_of(args.worker), "bench", threads=args.threads)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision_of(args.worker) == "bfloat16"):
        network(torch.zeros(1, 1, *args.patch))  # warm-up: one window (thread pools, allocator, lazy imports)
    run_tool(args.worker, data[(slice(None), *[slice(0, p) for p in args.patch])].contiguous(), network, args.patch, args.windows_per_batch)
    result = {}

    def once():
        start = time.perf_counter()
        result["logits"] = run_tool(args.worker, data, network, args.patch, args.windows_per_batch)
        result["seconds"] = time.perf_counter() - start

    growth = peak_growth_mb(once)
    np.save(args.work / f"logits_{args.worker}.npy", result["logits"].float().numpy())
    print(json.dumps({"seconds": round(result["seconds"], 2), "peak_growth_mb": growth, "precision": precision_of(args.worker)}))


def forward_gflop(shape: list[int], patch: list[int], features: int) -> float:
    """FLOPs of medseg's windows over ``shape`` (C, *S) at overlap 0.5: windows x the network's forward FLOPs."""
    from medseg.models import get_model_family
    from medseg.tasks.segmentation.inference.sliding_window import window_starts

    family = get_model_family("unet")
    kwargs, _ = family.architecture_for_patch([1.0] * len(patch), patch, base_features=features)
    windows = int(np.prod([len(window_starts(max(size, p), p, 0.5)) for size, p in zip(shape[1:], patch)]))
    return windows * family.flops_per_sample(patch, 1, NUM_CLASSES, kwargs) / 1e9


def equal_precision_ratios(results: dict) -> None:
    """Each medseg tool's speedup over each peer run at the same precision (peer seconds / ours)."""
    peers = {tool: row for tool, row in results.items() if not tool.startswith("medseg") and "seconds" in row}
    for tool, row in results.items():
        if tool.startswith("medseg") and "seconds" in row:
            row["speedup_vs_peers_at_equal_precision"] = {
                peer: round(peer_row["seconds"] / row["seconds"], 2) for peer, peer_row in peers.items() if peer_row["precision"] == row["precision"]
            }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, default=3, choices=[2, 3])
    parser.add_argument("--patch", type=int, nargs="+")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--windows-per-batch", type=int, default=1, help="windows per forward (medseg default 1; MONAI sw_batch_size)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tools", default="medseg,medseg-bf16,medseg-openvino,medseg-openvino-bf16,monai,monai-bf16,nnunet,nnunet-bf16")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.patch = args.patch or ([96, 96, 96] if args.dims == 3 else [256, 256])
    if args.worker:
        return worker(args)
    out = args.out or REPO / "bench" / "results" / f"inference_sliding_window_{args.dims}d.json"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = load_input(args.dims)
        np.save(work / "input.npy", data)
        torch.save(build_network(args.patch, args.features).state_dict(), work / "network.pt")
        results = {}
        for tool in args.tools.split(","):
            command = [sys.executable, __file__, "--worker", tool, "--work", str(work), "--dims", str(args.dims), "--patch", *map(str, args.patch),
                       "--features", str(args.features), "--windows-per-batch", str(args.windows_per_batch), "--threads", str(args.threads)]
            run = subprocess.run(command, capture_output=True, text=True)
            if run.returncode != 0:
                results[tool] = {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"}
                continue
            results[tool] = json.loads(run.stdout.strip().splitlines()[-1])
            print(tool, results[tool], flush=True)
        reference = np.load(work / "logits_medseg.npy") if "seconds" in results.get("medseg", {}) else None
        peaks = roofline()
        gflop = forward_gflop(list(data.shape), args.patch, args.features)
        for row in results.values():
            if "seconds" in row:
                row["achieved_gflops"] = round(gflop / row["seconds"], 1)
                row["fraction_of_peak"] = round(row["achieved_gflops"] / peaks[f"{row['precision']}_peak_gflops"], 3)
        equal_precision_ratios(results)
        for tool, row in results.items():
            if reference is not None and "seconds" in row and tool != "medseg":
                logits = np.load(work / f"logits_{tool}.npy")
                if logits.shape == reference.shape:
                    row["max_abs_logit_difference_vs_medseg"] = float(np.abs(logits - reference).max())
                    row["label_agreement_vs_medseg"] = float((logits.argmax(0) == reference.argmax(0)).mean())
                else:
                    row["max_abs_logit_difference_vs_medseg"] = f"shape {logits.shape}"
                row["seconds_vs_medseg_float32"] = round(row["seconds"] / results["medseg"]["seconds"], 2)
                row["memory_ratio_vs_medseg"] = round(row["peak_growth_mb"] / max(results["medseg"]["peak_growth_mb"], 1e-6), 2)
    content = {
        "command": "python bench/inference/sliding_window.py " + " ".join(sys.argv[1:]),
        "input_shape": list(data.shape), "patch": args.patch, "features": args.features, "windows_per_batch": args.windows_per_batch,
        "threads": args.threads, "overlap": 0.5, "blending": "gaussian, sigma = patch / 8", "mirroring": False,
        "forward_gflop": round(gflop, 1), "roofline": peaks, "results": results,
        "machine": machine_info(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(content, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
