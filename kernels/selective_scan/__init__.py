"""Selective scan (Mamba S6) with one dispatcher: ``selective_scan(..., backend="auto")``.

Backends, best first for the tensors' device: ``numba`` (fused compiled loops, forward and backward;
CPU tensors, when numba is installed), ``cpu`` (chunked PyTorch, hand-written backward; CPU tensors),
``cuda`` (mamba_ssm's CUDA kernel, when mamba_ssm is installed on a GPU machine), ``triton`` (our
GPU kernels, forward and backward; on CPU tensors only under TRITON_INTERPRET=1, for testing) and
``ref`` (sequential pure PyTorch, runs anywhere: the executable spec).
"""

from __future__ import annotations

import torch

from medseg_kernels.registry import Backend, cpu_float_reason, outside_autocast, register_backend, resolve
from medseg_kernels.scan_orders import check_order
from medseg_kernels.selective_scan.arguments import check_arguments
from medseg_kernels.selective_scan.cpu import selective_scan_cpu
from medseg_kernels.selective_scan.numba_scan import numba_unavailable_reason, selective_scan_numba
from medseg_kernels.selective_scan.mamba_cuda import mamba_cuda_unavailable_reason, selective_scan_mamba_cuda
from medseg_kernels.selective_scan.ref import selective_scan_ref
from medseg_kernels.selective_scan.triton_scan import selective_scan_triton, triton_unavailable_reason

OP = "selective_scan"

register_backend(Backend(OP, "numba", selective_scan_numba, numba_unavailable_reason, "fused compiled loop per channel, checkpointed recomputing backward"))
register_backend(Backend(OP, "cpu", selective_scan_cpu, cpu_float_reason, "chunked scan, fused per-step update, recomputing backward"))
register_backend(Backend(OP, "cuda", selective_scan_mamba_cuda, mamba_cuda_unavailable_reason, "mamba_ssm's CUDA kernel (peer, when installed)"))
register_backend(Backend(OP, "triton", selective_scan_triton, triton_unavailable_reason, "chunked associative scan per tile, recomputing backward"))
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
    order: torch.Tensor | None = None,
):
    """u, delta, z: (batch, D, L); A: (D, N); B, C: (D, N), (batch, N, L) or (batch, G, N, L).
    ``order``: scan step t visits position order[t] (medseg_kernels.scan_orders); y keeps u's layout."""
    check_arguments(u, delta, A, B, C, D, z, delta_bias)
    check_order(order, u.shape[-1])
    chosen = resolve(OP, backend, u.device, u.dtype)
    with outside_autocast(u.device):
        return chosen.function(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, order=order)


__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_cpu", "selective_scan_numba", "selective_scan_triton", "selective_scan_mamba_cuda"]
