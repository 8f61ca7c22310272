"""Timing, peak-memory and machine-info helpers shared by the kernel benchmarks."""

from __future__ import annotations

import multiprocessing
import platform
import resource
import statistics
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


def _peak_child(function, queue):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function()
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)


def peak_memory_mb(function: Callable[[], object]) -> float:
    """Growth of the resident-set high-water mark over one call, measured in a forked child so that
    earlier calls in this process cannot hide it (CPU tensors)."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_peak_child, args=(function, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"peak-memory child exited with {child.exitcode}")
    return round(queue.get(), 1)


def machine_info() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
