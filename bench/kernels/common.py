"""Timing, peak-memory and machine-info helpers shared by the kernel benchmarks."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch


def timed(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def peak_growth_mb(function: Callable[[], object], interval_s: float = 0.0005) -> float:
    """Peak resident memory above the level before the call, sampled by a thread (Linux): the
    process-wide high-water mark would hide a call's peak behind the import of torch."""
    before = _resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        function()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _resident_bytes())
    return round((peak[0] - before) / 2**20, 1)


def peak_memory_mb(script: str, *args: str) -> float:
    """Run ``script --peak-of ...`` in a fresh interpreter (forking a process whose thread pools
    are running can deadlock) and read the one JSON number it prints: peak growth in MB."""
    result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory run failed: {result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def memory_bandwidth_gb_s() -> float:
    """Copy bandwidth (read + write) of a 256 MB float32 buffer, GB/s."""
    big = torch.empty(64 * 1024 * 1024)
    out = torch.empty_like(big)
    seconds = timed(lambda: out.copy_(big), 5)
    return round(2 * big.numel() * 4 / seconds / 1e9, 2)


def batched_matmul_gflops(batch: int = 512, size: int = 64) -> float:
    """Rate of a batched (size x size) @ (size x size) float32 matmul, the chunkwise mLSTM's building block."""
    a, b = torch.randn(batch, size, size), torch.randn(batch, size, size)
    out = torch.empty_like(a)
    seconds = timed(lambda: torch.bmm(a, b, out=out), 20)
    return round(2 * batch * size**3 / seconds / 1e9, 2)


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """This machine's practical compute peak in ``dtype``: a large square matmul (the roofline's
    ceiling that a convolution or a window can approach), GFLOP/s."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    seconds = timed(lambda: torch.mm(a, b, out=out), repeats)
    return round(2 * size**3 / seconds / 1e9, 1)


def roofline() -> dict:
    """The float32 and bf16 matmul peaks and the copy bandwidth, measured in the same run as a bench."""
    return {"float32_peak_gflops": matmul_peak_gflops(torch.float32), "bfloat16_peak_gflops": matmul_peak_gflops(torch.bfloat16),
            "copy_bandwidth_gb_s": memory_bandwidth_gb_s()}


def machine_info() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
