"""Selective scan through mamba_ssm's CUDA kernel, when mamba_ssm is installed on a GPU machine.

mamba_ssm is a peer, never a dependency: this adapter only forwards to its ``selective_scan_fn``
(same argument semantics as ours), so ``backend="auto"`` uses the vendor kernel where it exists."""

from __future__ import annotations

import importlib.util

import torch

from medseg_kernels.scan_orders import scan_in_order


def mamba_cuda_unavailable_reason(device: torch.device | None, dtype: torch.dtype | None) -> str | None:
    if device is not None and device.type != "cuda":
        return f"needs CUDA tensors, not {device.type}"
    if importlib.util.find_spec("mamba_ssm") is None or importlib.util.find_spec("selective_scan_cuda") is None:
        return "mamba_ssm with its CUDA extension is not installed"
    return None


def selective_scan_mamba_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, order=None):
    """Its kernel cannot index a scan order: other orders run on gathered copies."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return scan_in_order(selective_scan_fn, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, order)
