"""Selective scan, fused CPU kernels compiled with Numba: forward and backward.

Why a compiled loop: the recurrence h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t is sequential in t,
and in PyTorch every step is at least one dispatched op (~3-6 us), which dominates for long
sequences with few channels (3D feature maps). Here one thread owns one (batch row, channel) and
walks the sequence with its (N,) state in registers: each input is read once, exp and the
multiply-adds are fused, nothing per step is allocated.
Memory: the forward keeps the state at every CHUNK-th step; the backward recomputes each chunk's
states from it (into a (CHUNK + 1, N) buffer per thread) and runs the adjoint recurrence backwards.
B and C gradients are shared by channels, so each thread accumulates into its own partial buffer,
summed afterwards (no atomics, no races). A scan order is followed by reading and writing step t at
order[t]. The optional parts (delta bias and softplus, D skip, z gate) stay in PyTorch around the
kernel. Semantics: medseg_kernels.selective_scan.ref (mamba_ssm's selective_scan_fn).
"""

from __future__ import annotations

import math
import threading

import torch

from medseg_kernels.numerics import EXP_FLOOR
from medseg_kernels.registry import cpu_float_reason
from medseg_kernels.selective_scan.ref import fast_backend

try:
    import numba
    import numpy as np
except ImportError:  # the backend reports itself unavailable
    numba = None

CHUNK = 64
# Numba's default "workqueue" threading layer aborts the process when two threads launch parallel
# kernels at once (a threaded server, say); each call already uses every core, so calls take turns.
_LAUNCH = threading.Lock()

__all__ = ["numba_unavailable_reason", "selective_scan_numba"]


def numba_unavailable_reason(device: torch.device | None, dtype: torch.dtype | None) -> str | None:
    if numba is None:
        return "numba is not installed (pip install numba)"
    return cpu_float_reason(device, dtype)


if numba is not None:
    _FLOOR32 = np.float32(EXP_FLOOR)  # float32: a float64 constant would turn exp into the double-precision one (2x slower)

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _forward_kernel(u, delta, A, B, C, positions, chunk, y, checkpoints, last):  # pragma: no cover - compiled
        # u, delta, y: (batch, D, L); A: (D, N); B, C: (1 or batch, G, 1 or L, N); positions: (L,)
        # checkpoints: (batch, D, chunks, N), the state before each chunk; last: (batch, D, N)
        batch, channels, length = u.shape
        state = A.shape[1]
        b_per_group, c_per_group = channels // B.shape[1], channels // C.shape[1]
        b_time, c_time = 1 if B.shape[2] > 1 else 0, 1 if C.shape[2] > 1 else 0
        for job in numba.prange(batch * channels):
            row, channel = job // channels, job % channels
            b_row, c_row = row if B.shape[0] > 1 else 0, row if C.shape[0] > 1 else 0
            b_group, c_group = channel // b_per_group, channel // c_per_group
            h = np.zeros(state, dtype=np.float32)
            for t in range(length):
                if t % chunk == 0:
                    checkpoints[row, channel, t // chunk, :] = h
                p = positions[t]
                step = delta[row, channel, p]
                drive = step * u[row, channel, p]
                out = np.float32(0.0)
                for n in range(state):
                    h[n] = math.exp(max(step * A[channel, n], _FLOOR32)) * h[n] + drive * B[b_row, b_group, p * b_time, n]
                    out += h[n] * C[c_row, c_group, p * c_time, n]
                y[row, channel, p] = out
            last[row, channel, :] = h

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def _backward_kernel(
        u, delta, A, B, C, positions, chunk, checkpoints, grad_y, grad_last,
        grad_u, grad_delta, grad_A_parts, grad_B_parts, grad_C_parts,
    ):  # pragma: no cover - compiled
        # grad_*_parts: (parts, ...) one partial sum per thread-part, summed by the caller
        batch, channels, length = u.shape
        state = A.shape[1]
        parts = grad_A_parts.shape[0]
        jobs = batch * channels
        per_part = (jobs + parts - 1) // parts
        b_per_group, c_per_group = channels // B.shape[1], channels // C.shape[1]
        b_time, c_time = 1 if B.shape[2] > 1 else 0, 1 if C.shape[2] > 1 else 0
        for part in numba.prange(parts):
            states = np.empty((chunk + 1, state), dtype=np.float32)
            decays = np.empty((chunk, state), dtype=np.float32)
            adjoint = np.empty(state, dtype=np.float32)
            for job in range(part * per_part, min(jobs, (part + 1) * per_part)):
                row, channel = job // channels, job % channels
                b_row, c_row = row if B.shape[0] > 1 else 0, row if C.shape[0] > 1 else 0
                b_group, c_group = channel // b_per_group, channel // c_per_group
                adjoint[:] = grad_last[row, channel, :]  # dL/dh_t arriving from later steps
                for c in range((length + chunk - 1) // chunk - 1, -1, -1):
                    start, stop = c * chunk, min(length, (c + 1) * chunk)
                    states[0, :] = checkpoints[row, channel, c, :]
                    for t in range(start, stop):  # recompute the chunk's states
                        p = positions[t]
                        step = delta[row, channel, p]
                        drive = step * u[row, channel, p]
                        j = t - start
                        for n in range(state):
                            decays[j, n] = math.exp(max(step * A[channel, n], _FLOOR32))
                            states[j + 1, n] = decays[j, n] * states[j, n] + drive * B[b_row, b_group, p * b_time, n]
                    for t in range(stop - 1, start - 1, -1):
                        p = positions[t]
                        j = t - start
                        step, value, grad_out = delta[row, channel, p], u[row, channel, p], grad_y[row, channel, p]
                        drive = step * value
                        grad_drive = np.float32(0.0)
                        grad_step = np.float32(0.0)
                        for n in range(state):
                            decay = decays[j, n]
                            c_value = C[c_row, c_group, p * c_time, n]
                            g = adjoint[n] + grad_out * c_value  # dL/dh_t
                            grad_C_parts[part, c_row, c_group, p * c_time, n] += grad_out * states[j + 1, n]
                            grad_B_parts[part, b_row, b_group, p * b_time, n] += g * drive
                            grad_drive += g * B[b_row, b_group, p * b_time, n]
                            through_decay = g * states[j, n] * decay  # dL/d(delta_t A_n)
                            grad_step += through_decay * A[channel, n]
                            grad_A_parts[part, channel, n] += through_decay * step
                            adjoint[n] = g * decay
                        grad_u[row, channel, p] = grad_drive * step
                        grad_delta[row, channel, p] = grad_step + grad_drive * value


def _kernel_matrix(matrix: torch.Tensor, batch: int, channels: int, length: int) -> torch.Tensor:
    """B or C -> (1 or batch, G, 1 or L, N) float32 contiguous: the state index fastest."""
    if matrix.dim() == 2:  # (D, N), time-invariant: one group per channel
        return matrix.reshape(1, channels, 1, -1).contiguous()
    if matrix.dim() == 3:  # (batch, N, L)
        return matrix.transpose(1, 2).reshape(batch, 1, length, -1).contiguous()
    return matrix.transpose(2, 3).contiguous()  # (batch, G, N, L)


def _to_layout(grad: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(1 or batch, G, 1 or L, N) gradient -> the layout of ``matrix``."""
    if matrix.dim() == 2:
        return grad.reshape(matrix.shape)
    if matrix.dim() == 3:
        return grad[:, 0].transpose(1, 2)
    return grad.transpose(2, 3)


def _array(x: torch.Tensor):
    return x.detach().numpy()


class _SelectiveScanNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, order):
        batch, channels, length = u.shape
        B_k, C_k = _kernel_matrix(B, batch, channels, length), _kernel_matrix(C, batch, channels, length)
        positions = order if order is not None else torch.arange(length)
        y = torch.empty_like(u)
        checkpoints = u.new_empty(batch, channels, -(-length // CHUNK), A.shape[1])
        last = u.new_empty(batch, channels, A.shape[1])
        with _LAUNCH:
            _forward_kernel(_array(u), _array(delta), _array(A), _array(B_k), _array(C_k), _array(positions), CHUNK, _array(y), _array(checkpoints), _array(last))
        ctx.save_for_backward(u, delta, A, B, C, B_k, C_k, positions, checkpoints)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, B_k, C_k, positions, checkpoints = ctx.saved_tensors
        batch, channels, length = u.shape
        grad_y = grad_y.float().contiguous() if grad_y is not None else torch.zeros_like(u)
        grad_last = grad_last.float().contiguous() if grad_last is not None else u.new_zeros(batch, channels, A.shape[1])
        parts = max(1, min(numba.get_num_threads(), batch * channels))
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A_parts = u.new_zeros(parts, *A.shape)
        grad_B_parts, grad_C_parts = u.new_zeros(parts, *B_k.shape), u.new_zeros(parts, *C_k.shape)
        with _LAUNCH:
            _backward_kernel(
                _array(u), _array(delta), _array(A), _array(B_k), _array(C_k), _array(positions), CHUNK, _array(checkpoints),
                _array(grad_y), _array(grad_last), _array(grad_u), _array(grad_delta),
                _array(grad_A_parts), _array(grad_B_parts), _array(grad_C_parts),
            )
        grad_B, grad_C = _to_layout(grad_B_parts.sum(0), B), _to_layout(grad_C_parts.sum(0), C)
        return grad_u, grad_delta, grad_A_parts.sum(0), grad_B, grad_C, None


def _numba_core(u, delta, A, B, C, order):
    positions = order.to(torch.int64).contiguous() if order is not None else None
    return _SelectiveScanNumba.apply(u, delta, A, B, C, positions)


selective_scan_numba = fast_backend(_numba_core)
