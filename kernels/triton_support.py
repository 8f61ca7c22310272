"""Triton, when installed, and the availability rule shared by every Triton backend."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # every Triton backend reports itself unavailable
    triton = None
    tl = None


def interpreting() -> bool:
    """TRITON_INTERPRET=1 runs the kernels on CPU tensors with NumPy: how the tests check them without a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_unavailable_reason(device: torch.device | None, dtype: torch.dtype | None) -> str | None:
    if triton is None:
        return "triton is not installed (pip install 'medseg[triton]')"
    if device is not None and device.type == "cpu" and not interpreting():
        return "needs a CUDA device (CPU tensors only under TRITON_INTERPRET=1, for testing)"
    if device is not None and device.type not in ("cpu", "cuda"):
        return f"runs on CUDA tensors, not {device.type}"
    if dtype is not None and not dtype.is_floating_point:
        return f"needs floating-point tensors, not {dtype}"
    return None
