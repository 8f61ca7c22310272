"""String-keyed kernel backends with one dispatcher per op.

Each op registers backends in order of preference; ``backend="auto"`` picks the first one that is
available for the tensors' device and dtype, so portable code is always the last resort."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    function: Callable
    # why the backend cannot run on this machine / for these tensors; None when it can
    unavailable_reason: Callable[[torch.device | None, torch.dtype | None], str | None]
    summary: str


_BACKENDS: dict[str, list[Backend]] = {}


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


def register_backend(backend: Backend) -> Backend:
    existing = _BACKENDS.setdefault(backend.op, [])
    if any(b.name == backend.name for b in existing):
        raise ValueError(f"backend {backend.op}/{backend.name} registered twice")
    existing.append(backend)
    return backend


def backends(op: str) -> list[Backend]:
    if op not in _BACKENDS:
        raise KeyError(f"unknown kernel op '{op}' (known: {', '.join(sorted(_BACKENDS))})")
    return list(_BACKENDS[op])


def all_ops() -> list[str]:
    return sorted(_BACKENDS)


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> Backend:
    """The backend to run: the named one (error if it cannot run here) or the best available."""
    candidates = backends(op)
    if backend != "auto":
        chosen = next((b for b in candidates if b.name == backend), None)
        if chosen is None:
            raise ValueError(f"unknown backend '{backend}' for {op} (known: {', '.join(b.name for b in candidates)})")
        reason = chosen.unavailable_reason(device, dtype)
        if reason:
            raise RuntimeError(f"{op} backend '{backend}' cannot run here: {reason}")
        return chosen
    for candidate in candidates:
        if candidate.unavailable_reason(device, dtype) is None:
            return candidate
    raise RuntimeError(f"no {op} backend can run on {device} with {dtype}")
