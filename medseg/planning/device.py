"""Which budget to plan for on this machine: a GPU's memory, or a CPU's time per step.

On a CPU the planner needs the machine's real throughput for the network it is sizing, so it
times a few forward+backward steps of that network family on a small patch (about a second).
The rate is kept per dataset (``cpu_throughput.json`` beside the plans) for this machine, so that
planning again, or planning variants of a family for ``medseg compare``, gives the same sizes
instead of sizes that move with timing noise."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from medseg.models.registry import get_model_family
from medseg.planning.budget import REFERENCE_GB, Budget

CPU_STEP_SECONDS = 1.0  # a 10-minute budget then buys ~600 iterations
CPU_BASE_FEATURES = 16  # half nnU-Net's width: ~4x fewer FLOPs, the difference between 150 and 600 steps
CALIBRATION_PATCH = {2: (128, 128), 3: (16, 32, 32)}
CALIBRATION_SPACING = {2: (1.0, 1.0), 3: (1.0, 1.0, 1.0)}


def measure_throughput(model: str, ndim: int, base_features: int, repeats: int = 2, precision: str = "float32") -> float:
    """Forward+backward FLOPs per second of a small network of the family on this CPU, its forward
    in ``precision`` as training runs it (medseg.precision)."""
    from medseg.precision import autocast

    family = get_model_family(model)
    kwargs, topology = family.architecture_for_patch(CALIBRATION_SPACING[ndim], CALIBRATION_PATCH[ndim], base_features=base_features)
    network = family.build(1, 2, **kwargs)
    patch = topology.patch_size
    batch = torch.randn(2, 1, *patch)
    cpu = torch.device("cpu")
    with autocast(cpu, precision):
        output = network(batch).float().sum()
    output.backward()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        network.zero_grad(set_to_none=True)
        with autocast(cpu, precision):
            output = network(batch).float().sum()
        output.backward()
    seconds = (time.perf_counter() - start) / repeats
    return 3.0 * 2 * family.flops_per_sample(patch, 1, 2, kwargs) / seconds


def machine_key() -> str:
    """What a measured rate depends on: the machine, its thread count and the torch build."""
    return f"{platform.node()}|{platform.machine()}|{os.cpu_count()} cpus|{torch.get_num_threads()} threads|torch {torch.__version__}"


def cached_throughput(model: str, base_features: int, cache: Path | None, precision: str = "float32") -> dict[int, float]:
    """The family's FLOP rates in 2D and 3D, from ``cache`` when measured on this machine."""
    from medseg.atomic import write_json_atomic

    key, stored = f"{model}|{base_features}" + ("" if precision == "float32" else f"|{precision}"), {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
        except ValueError:
            stored = {}  # a damaged cache is only a cache: measure again
        if not isinstance(stored, dict) or stored.get("machine") != machine_key():
            stored = {}
    entry = stored.get("rates", {}).get(key)
    if isinstance(entry, dict) and {"2", "3"} <= set(entry):
        return {int(ndim): float(rate) for ndim, rate in entry.items()}
    rates = {ndim: measure_throughput(model, ndim, base_features, precision=precision) for ndim in (2, 3)}
    if cache is not None:
        stored = {"machine": machine_key(), "rates": {**stored.get("rates", {}), key: {str(n): r for n, r in rates.items()}}}
        write_json_atomic(cache, stored)
    return rates


def default_budget(
    model: str = "unet", memory_gb: float | None = None, step_seconds: float | None = None, device: str | None = None,
    training_seconds: float | None = None, preset: dict | None = None, throughput_cache: Path | None = None, precision: str = "float32",
) -> Budget:
    """--memory-gb selects nnU-Net's memory sizing; otherwise a GPU plans for its memory and a CPU
    for time (and for one run's training budget, when known). A preset's settings (medseg_plans)
    choose the mode, memory, step time and width; explicit options win over them."""
    preset = preset or {}
    memory_gb = memory_gb if memory_gb is not None else preset.get("memory_gb")
    step_seconds = step_seconds or preset.get("step_seconds")
    mode = preset.get("mode") or ("memory" if memory_gb is not None else None)
    if mode is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        mode = "memory" if device.startswith("cuda") else "time"
    if mode == "memory":
        if memory_gb is None:
            total_gb = torch.cuda.get_device_properties(0).total_memory / 1024**3
            memory_gb = min(8.0, 0.9 * total_gb)  # nnU-Net's default target, or less
        references = preset.get("reference_activations")
        return Budget(
            "memory", memory_gb=memory_gb, base_features=int(preset.get("base_features", 32)),
            reference_activations={int(ndim): float(count) for ndim, count in references.items()} if references else None,
            reference_gb=float(preset.get("reference_gb", REFERENCE_GB)), max_dataset_fraction=float(preset.get("max_dataset_fraction", 0.05)),
        )
    features = int(preset.get("base_features", CPU_BASE_FEATURES))
    rates = cached_throughput(model, features, throughput_cache, precision)
    return Budget(
        "time", step_seconds=step_seconds or CPU_STEP_SECONDS, flops_per_second=rates, base_features=features, training_seconds=training_seconds,
        precision=precision, max_dataset_fraction=float(preset.get("max_dataset_fraction", 0.05)),
    )
