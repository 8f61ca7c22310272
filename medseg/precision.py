"""Which floating-point precision a forward pass runs in, for training and inference alike.

bfloat16 runs as autocast: weights, optimizer state and losses stay float32, the convolutions and
matmuls run in bf16. On a CPU that pays only with native bf16 arithmetic (AVX-512 BF16 or AMX);
elsewhere bf16 is emulated and slower, so ``auto`` stays in float32 there."""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

from medseg.errors import MedsegError

PRECISIONS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic; elsewhere bf16 is emulated and slower


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no way to tell cheaply, stay in float32
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise MedsegError(f"unknown precision '{precision}' (choose {', '.join(PRECISIONS)})")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on a CPU with native bf16, else float32 (on CUDA too: fp16/bf16 training
    there is not measured yet)."""
    if check_precision(precision) != "auto":
        return precision
    return "bfloat16" if device.type == "cpu" and cpu_has_native_bf16() else "float32"


def autocast(device: torch.device, precision: str):
    """The context a forward pass runs in: bf16 autocast for ``bfloat16``, nothing for float32."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
