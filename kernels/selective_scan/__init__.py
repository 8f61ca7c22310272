"""Selective scan (Mamba S6) with one dispatcher: ``selective_scan(..., backend="auto")``.

Backends, best first: ``cpu`` (chunked, hand-written backward; float tensors on the CPU) and ``ref``
(sequential pure PyTorch, runs anywhere: the executable spec). GPU backends (Triton, mamba_ssm's
CUDA kernel) are not implemented yet; ``medseg kernels`` says so.
"""

from __future__ import annotations

import torch

from medseg_kernels.registry import Backend, register_backend, resolve
from medseg_kernels.selective_scan.cpu import selective_scan_cpu
from medseg_kernels.selective_scan.ref import selective_scan_ref

OP = "selective_scan"


def _cpu_reason(device, dtype) -> str | None:
    if device is not None and device.type != "cpu":
        return f"runs on CPU tensors, not {device.type}"
    if dtype is not None and not dtype.is_floating_point:
        return f"needs floating-point tensors, not {dtype}"
    return None


register_backend(Backend(OP, "cpu", selective_scan_cpu, _cpu_reason, "chunked scan, fused per-step update, recomputing backward"))
register_backend(Backend(OP, "ref", selective_scan_ref, lambda device, dtype: None, "sequential pure PyTorch reference"))


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
):
    """u, delta, z: (batch, D, L); A: (D, N); B, C: (D, N), (batch, N, L) or (batch, G, N, L)."""
    chosen = resolve(OP, backend, u.device, u.dtype)
    return chosen.function(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_cpu"]
