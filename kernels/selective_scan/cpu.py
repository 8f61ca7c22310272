"""Selective scan, fast CPU path: chunked, with a hand-written, memory-lean backward.

Why this shape: on a CPU the recurrence is cheapest as one fused multiply-add per time step on a
cache-resident (batch, D, N) state, while everything that does not depend on the previous state
(decays, inputs, outputs, all gradient terms) is computed for a whole chunk of time steps at once.
Only one chunk's (T, batch, D, N) tensors ever exist, never the whole sequence's. The backward keeps
just the state at each chunk start and recomputes the chunk's states (recomputation instead of
storage), then runs the adjoint recurrence backwards, again one fused op per step.
A scan order (medseg_kernels.scan_orders) is followed by indexing each chunk's steps, so only one
chunk is ever gathered, and outputs and gradients are written straight back to their positions.
Semantics: medseg_kernels.selective_scan.ref (mamba_ssm's selective_scan_fn).
"""

from __future__ import annotations

import torch

from medseg_kernels.numerics import EXP_FLOOR
from medseg_kernels.selective_scan.ref import fast_backend

CHUNK = 64  # at B=2, D=192, N=16 on 2 cores: 32..128 within 10%, 256 is 30% slower (fwd+bwd)


def _groups(B: torch.Tensor, C: torch.Tensor) -> int:
    groups = {m.shape[1] for m in (B, C) if m.dim() == 4}
    if len(groups) > 1:
        raise ValueError(f"B and C must use the same number of groups, got {sorted(groups)}")
    return groups.pop() if groups else 1


class _Steps:
    """Time steps [start, stop) of the scan along the last axis: a slice, or the positions a scan order names."""

    def __init__(self, order: torch.Tensor | None):
        self.order = order

    def take(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return x[..., start:stop] if self.order is None else x.index_select(-1, self.order[start:stop])

    def put(self, target: torch.Tensor, start: int, stop: int, value: torch.Tensor) -> None:
        if self.order is None:
            target[..., start:stop] = value
        else:
            target.index_copy_(target.dim() - 1, self.order[start:stop], value)

    def add(self, target: torch.Tensor, start: int, stop: int, value: torch.Tensor) -> None:
        if self.order is None:
            target[..., start:stop] += value
        else:
            target.index_add_(target.dim() - 1, self.order[start:stop], value)


def _matrix_chunk(matrix: torch.Tensor, steps: _Steps, start: int, stop: int, groups: int, per_group: int) -> torch.Tensor:
    """B or C for time steps [start, stop) as a tensor broadcastable to (T, batch, G, Dg, N)."""
    if matrix.dim() == 2:  # (D, N)
        return matrix.reshape(groups, per_group, -1)[None, None]
    if matrix.dim() == 3:  # (batch, N, L)
        return steps.take(matrix, start, stop).permute(2, 0, 1)[:, :, None, None, :]
    return steps.take(matrix, start, stop).permute(3, 0, 1, 2)[:, :, :, None, :]  # (batch, G, N, L)


def _matrix_grad_add(grad: torch.Tensor, chunk_grad: torch.Tensor, matrix: torch.Tensor, steps: _Steps, start: int, stop: int) -> None:
    """Accumulate a (T, batch, G, Dg, N) gradient into ``grad`` (laid out like ``matrix``)."""
    if matrix.dim() == 2:
        grad += chunk_grad.sum(dim=(0, 1)).reshape(grad.shape)
    elif matrix.dim() == 3:
        steps.add(grad, start, stop, chunk_grad.sum(dim=(2, 3)).permute(1, 2, 0))
    else:
        steps.add(grad, start, stop, chunk_grad.sum(dim=3).permute(1, 2, 3, 0))


def _time_major(x: torch.Tensor, steps: _Steps, start: int, stop: int, groups: int) -> torch.Tensor:
    """(batch, D, L) -> (T, batch, G, Dg) for time steps [start, stop), contiguous: the per-chunk
    tensors computed from it inherit its layout, and the per-step loop needs each step's slice dense
    (strided slices made it 6x slower)."""
    batch, channels, _ = x.shape
    return steps.take(x, start, stop).permute(2, 0, 1).reshape(stop - start, batch, groups, channels // groups).contiguous()


def _channel_major(value: torch.Tensor, batch: int, channels: int) -> torch.Tensor:
    """(T, batch, G, Dg) -> (batch, D, T)."""
    return value.reshape(value.shape[0], batch, channels).permute(1, 2, 0)


def _chunk_terms(delta_c, u_c, A_g, B_c):
    """Per-step decay a_t = exp(delta_t A) and input b_t = delta_t u_t B_t, both (T, batch, G, Dg, N)."""
    decay = torch.exp((delta_c[..., None] * A_g).clamp_min(EXP_FLOOR))  # floored: numerics.EXP_FLOOR
    drive = (delta_c * u_c)[..., None] * B_c
    return decay, drive


def _run_states(decay: torch.Tensor, drive: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + b_t over the chunk; returns all states (T, batch, G, Dg, N)."""
    states = torch.empty_like(drive)
    for t in range(states.shape[0]):
        state = torch.addcmul(drive[t], decay[t], state, out=states[t])
    return states


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, chunk, order):
        steps = _Steps(order)
        batch, channels, length = u.shape
        groups = _groups(B, C)
        per_group = channels // groups
        A_g = A.reshape(groups, per_group, -1)
        state = u.new_zeros(batch, groups, per_group, A.shape[1])
        y = u.new_empty(batch, channels, length)
        chunk_starts = []
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            chunk_starts.append(state)
            delta_c, u_c = _time_major(delta, steps, start, stop, groups), _time_major(u, steps, start, stop, groups)
            decay, drive = _chunk_terms(delta_c, u_c, A_g, _matrix_chunk(B, steps, start, stop, groups, per_group))
            states = _run_states(decay, drive, state)
            state = states[-1].clone()
            out = (states * _matrix_chunk(C, steps, start, stop, groups, per_group)).sum(-1)  # (T, batch, G, Dg)
            steps.put(y, start, stop, _channel_major(out, batch, channels))
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(chunk_starts))
        ctx.chunk, ctx.order = chunk, order
        return y, state.reshape(batch, channels, -1)

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, chunk_starts = ctx.saved_tensors
        chunk, steps = ctx.chunk, _Steps(ctx.order)
        batch, channels, length = u.shape
        groups = _groups(B, C)
        per_group = channels // groups
        A_g = A.reshape(groups, per_group, -1)
        grad_u, grad_delta = torch.zeros_like(u), torch.zeros_like(delta)
        grad_A, grad_B, grad_C = torch.zeros_like(A_g), torch.zeros_like(B), torch.zeros_like(C)
        # adjoint flowing into the last state of the chunk from later time steps: a_{t+1} g_{t+1}
        carry = u.new_zeros(batch, groups, per_group, A.shape[1])
        if grad_last_state is not None:
            carry = carry + grad_last_state.reshape(carry.shape)
        starts = list(range(0, length, chunk))
        for index in reversed(range(len(starts))):
            start, stop = starts[index], min(starts[index] + chunk, length)
            count = stop - start
            delta_c, u_c = _time_major(delta, steps, start, stop, groups), _time_major(u, steps, start, stop, groups)
            B_c = _matrix_chunk(B, steps, start, stop, groups, per_group)
            C_c = _matrix_chunk(C, steps, start, stop, groups, per_group)
            decay, drive = _chunk_terms(delta_c, u_c, A_g, B_c)
            initial = chunk_starts[index]
            states = _run_states(decay, drive, initial)
            dy = _time_major(grad_y, steps, start, stop, groups)  # (T, batch, G, Dg)
            adjoint = (dy[..., None] * C_c).expand_as(states).contiguous()  # direct terms, then the recurrence
            adjoint[-1] += carry
            for t in range(count - 2, -1, -1):
                torch.addcmul(adjoint[t], decay[t + 1], adjoint[t + 1], out=adjoint[t])
            carry = decay[0] * adjoint[0]
            previous = torch.cat([initial[None], states[:-1]])
            # through the decay: d(delta A) = g * h_{t-1} * a_t
            through_decay = adjoint * previous * decay
            grad_A += (through_decay * delta_c[..., None]).sum(dim=(0, 1))
            # through the input b = delta u B
            adjoint_B = adjoint * B_c
            sum_decay_A = (through_decay * A_g).sum(-1)
            sum_adjoint_B = adjoint_B.sum(-1)
            grad_delta_c = sum_decay_A + sum_adjoint_B * u_c
            grad_u_c = sum_adjoint_B * delta_c
            _matrix_grad_add(grad_B, adjoint * (delta_c * u_c)[..., None], B, steps, start, stop)
            _matrix_grad_add(grad_C, states * dy[..., None], C, steps, start, stop)
            steps.put(grad_delta, start, stop, _channel_major(grad_delta_c, batch, channels))
            steps.put(grad_u, start, stop, _channel_major(grad_u_c, batch, channels))
        return grad_u, grad_delta, grad_A.reshape(A.shape), grad_B, grad_C, None, None


def _cpu_core(u, delta, A, B, C, order):
    return _SelectiveScanCPU.apply(u, delta, A, B, C, CHUNK, order)


selective_scan_cpu = fast_backend(_cpu_core)
