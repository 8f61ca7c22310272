"""String-keyed kernel backends with one dispatcher per op.

Each op registers backends in order of preference; ``backend="auto"`` picks the first one that is
available for the tensors' device and dtype, so portable code is always the last resort."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from medseg.registry import Registry


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    function: Callable
    # why the backend cannot run on this machine / for these tensors; None when it can
    unavailable_reason: Callable[[torch.device | None, torch.dtype | None], str | None]
    summary: str


_OPS: dict[str, Registry[Backend]] = {}  # op -> its backends, best first


def floating_point_reason(device: torch.device | None, dtype: torch.dtype | None) -> str | None:
    """Availability rule of portable PyTorch backends: any device, floating-point tensors."""
    if dtype is not None and not dtype.is_floating_point:
        return f"needs floating-point tensors, not {dtype}"
    return None


def cpu_float_reason(device: torch.device | None, dtype: torch.dtype | None) -> str | None:
    """Availability rule of CPU-tuned backends: CPU, floating-point tensors."""
    if device is not None and device.type != "cpu":
        return f"runs on CPU tensors, not {device.type}"
    return floating_point_reason(device, dtype)


def _op(op: str) -> Registry[Backend]:
    if op not in _OPS:
        _OPS[op] = Registry("backend", error=ValueError, scope=f"for {op}")
    return _OPS[op]


def register_backend(backend: Backend) -> Backend:
    return _op(backend.op).register(backend.name, backend)


def backends(op: str) -> list[Backend]:
    if op not in _OPS:
        raise KeyError(f"unknown kernel op '{op}' (known: {', '.join(sorted(_OPS))})")
    return _OPS[op].values()


def all_ops() -> list[str]:
    return sorted(_OPS)


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend to run: the named one (error if it cannot run here) or the best available."""
    candidates = backends(op)
    if backend != "auto":
        chosen = _OPS[op].get(backend)
        reason = chosen.unavailable_reason(device, dtype)
        if reason:
            raise RuntimeError(f"{op} backend '{backend}' cannot run here: {reason}")
        return chosen
    for candidate in candidates:
        if candidate.unavailable_reason(device, dtype) is None:
            return candidate
    raise RuntimeError(f"no {op} backend can run on {device} with {dtype}")


def outside_autocast(device: torch.device):
    """The context a kernel runs in: autocast off, because every backend keeps its own precision
    rules (inputs of any float dtype, state and matmuls in float32, output in the input's dtype);
    under a bf16 autocast their float32 matmuls would otherwise run in bf16."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else nullcontext()
