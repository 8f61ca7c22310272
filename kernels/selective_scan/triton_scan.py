"""Selective scan, Triton GPU path: forward and backward kernels (also run on CPU tensors under
TRITON_INTERPRET=1, which is how the tests check them on a machine without a GPU).

One program owns (one batch row, BLOCK_D channels) and walks the sequence in chunks of CHUNK steps.
Inside a chunk the recurrence h_t = a_t h_{t-1} + x_t is a parallel associative scan over time on
a (BLOCK_D, N, CHUNK) register tile; between chunks one (BLOCK_D, N) state is carried. The forward
stores only the state at each chunk start; the backward recomputes the chunk's states from it and
runs the adjoint recurrence dh_t = C_t dy_t + a_{t+1} dh_{t+1} as a reverse scan. Because
a_t h_{t-1} = h_t - x_t, no shifted copy of the states is needed. A scan order is followed by
loading and storing step t at order[t]: no permuted copy of the feature map.
The optional parts (delta bias and softplus, D skip, z gate) stay in PyTorch around the kernel.
Semantics: medseg_kernels.selective_scan.ref (mamba_ssm's selective_scan_fn).
"""

from __future__ import annotations

import torch

from medseg_kernels.selective_scan.ref import fast_backend
from medseg_kernels.triton_support import tl, triton, triton_unavailable_reason

CHUNK = 32
MAX_BLOCK_D = 8

__all__ = ["selective_scan_triton", "triton_unavailable_reason"]


if triton is not None:

    @triton.jit
    def _linear_combine(a_first, x_first, a_second, x_second):
        # (a1, x1) then (a2, x2): h -> a2 (a1 h + x1) + x2
        return a_first * a_second, a_second * x_first + x_second

    @triton.jit
    def _positions(order_ptr, t, mask_t, HAS_ORDER: tl.constexpr):
        # where step t lives in memory: t itself, or order[t] for another traversal of the map
        if HAS_ORDER:
            return tl.load(order_ptr + t, mask=mask_t, other=0)
        return t

    @triton.jit
    def _scan_forward_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, y_ptr, starts_ptr, last_ptr, order_ptr,
        length, channels, state, per_group, chunks,
        stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
        stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_T: tl.constexpr, HAS_ORDER: tl.constexpr,
    ):
        batch = tl.program_id(0)
        block = tl.program_id(1)
        d = block * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        t_local = tl.arange(0, CHUNK_T)
        mask_d, mask_n = d < channels, n < state
        group = (block * BLOCK_D) // per_group
        A = tl.load(A_ptr + d[:, None] * state + n[None, :], mask=mask_d[:, None] & mask_n[None, :], other=0.0)
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        row = batch * channels * length + d[:, None] * length  # u, delta, y: (batch, D, L) contiguous
        for c in range(chunks):
            step = c * CHUNK_T + t_local
            mask_t = step < length
            t = _positions(order_ptr, step, mask_t, HAS_ORDER)
            tile = mask_d[:, None] & mask_t[None, :]
            start_offset = ((batch * chunks + c) * channels + d[:, None]) * state + n[None, :]
            tl.store(starts_ptr + start_offset, h, mask=mask_d[:, None] & mask_n[None, :])
            u = tl.load(u_ptr + row + t[None, :], mask=tile, other=0.0)
            delta = tl.load(delta_ptr + row + t[None, :], mask=tile, other=0.0)  # 0 past the end: a = 1, x = 0
            matrix_mask = mask_n[:, None] & mask_t[None, :]
            B = tl.load(B_ptr + batch * stride_B_batch + group * stride_B_group + n[:, None] * stride_B_state + t[None, :] * stride_B_time, mask=matrix_mask, other=0.0)
            C = tl.load(C_ptr + batch * stride_C_batch + group * stride_C_group + n[:, None] * stride_C_state + t[None, :] * stride_C_time, mask=matrix_mask, other=0.0)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])  # (BLOCK_D, BLOCK_N, CHUNK)
            drive = (delta * u)[:, None, :] * B[None, :, :]
            decay_cum, drive_cum = tl.associative_scan((decay, drive), 2, _linear_combine)
            states = decay_cum * h[:, :, None] + drive_cum
            y = tl.sum(states * C[None, :, :], axis=1)
            tl.store(y_ptr + row + t[None, :], y, mask=tile)
            h = tl.sum(tl.where((t_local == CHUNK_T - 1)[None, None, :], states, 0.0), axis=2)
        tl.store(last_ptr + (batch * channels + d[:, None]) * state + n[None, :], h, mask=mask_d[:, None] & mask_n[None, :])

    @triton.jit
    def _scan_backward_kernel(
        u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, starts_ptr, grad_y_ptr, grad_last_ptr, order_ptr,
        grad_u_ptr, grad_delta_ptr, grad_A_ptr, grad_B_ptr, grad_C_ptr,
        length, channels, state, per_group, chunks, blocks,
        stride_B_batch, stride_B_group, stride_B_state, stride_B_time,
        stride_C_batch, stride_C_group, stride_C_state, stride_C_time,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK_T: tl.constexpr, HAS_ORDER: tl.constexpr,
    ):
        batch = tl.program_id(0)
        block = tl.program_id(1)
        d = block * BLOCK_D + tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        t_local = tl.arange(0, CHUNK_T)
        mask_d, mask_n = d < channels, n < state
        state_mask = mask_d[:, None] & mask_n[None, :]
        group = (block * BLOCK_D) // per_group
        A = tl.load(A_ptr + d[:, None] * state + n[None, :], mask=state_mask, other=0.0)
        grad_A = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        # dh of the first step of the chunk after this one (starts as the last state's gradient path)
        next_grad = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        grad_last = tl.load(grad_last_ptr + (batch * channels + d[:, None]) * state + n[None, :], mask=state_mask, other=0.0)
        row = batch * channels * length + d[:, None] * length
        partial_row = (batch * blocks + block) * state * length  # grad_B/grad_C partials: (batch, blocks, N, L)
        for reverse_index in range(chunks):
            c = chunks - 1 - reverse_index
            step = c * CHUNK_T + t_local
            mask_t = step < length
            has_next = step + 1 < length
            t = _positions(order_ptr, step, mask_t, HAS_ORDER)
            t_next = _positions(order_ptr, step + 1, has_next, HAS_ORDER)
            tile = mask_d[:, None] & mask_t[None, :]
            matrix_mask = mask_n[:, None] & mask_t[None, :]
            u = tl.load(u_ptr + row + t[None, :], mask=tile, other=0.0)
            delta = tl.load(delta_ptr + row + t[None, :], mask=tile, other=0.0)
            # a_{t+1}: the decay that carries dh_{t+1} back to step t (0 past the end)
            delta_next = tl.load(delta_ptr + row + t_next[None, :], mask=mask_d[:, None] & has_next[None, :], other=0.0)
            B = tl.load(B_ptr + batch * stride_B_batch + group * stride_B_group + n[:, None] * stride_B_state + t[None, :] * stride_B_time, mask=matrix_mask, other=0.0)
            C = tl.load(C_ptr + batch * stride_C_batch + group * stride_C_group + n[:, None] * stride_C_state + t[None, :] * stride_C_time, mask=matrix_mask, other=0.0)
            grad_y = tl.load(grad_y_ptr + row + t[None, :], mask=tile, other=0.0)
            h0 = tl.load(starts_ptr + ((batch * chunks + c) * channels + d[:, None]) * state + n[None, :], mask=state_mask, other=0.0)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])
            drive = (delta * u)[:, None, :] * B[None, :, :]
            decay_cum, drive_cum = tl.associative_scan((decay, drive), 2, _linear_combine)
            states = decay_cum * h0[:, :, None] + drive_cum
            back = tl.where(has_next[None, None, :], tl.exp(delta_next[:, None, :] * A[:, :, None]), 0.0)
            direct = grad_y[:, None, :] * C[None, :, :]
            direct += tl.where((step == length - 1)[None, None, :], grad_last[:, :, None], 0.0)
            back_cum, grad_cum = tl.associative_scan((back, direct), 2, _linear_combine, reverse=True)
            grad_h = grad_cum + back_cum * next_grad[:, :, None]  # dh_t, (BLOCK_D, BLOCK_N, CHUNK)
            through_decay = grad_h * (states - drive)  # dh_t * a_t * h_{t-1}
            grad_A += tl.sum(through_decay * delta[:, None, :], axis=2)
            grad_h_B = tl.sum(grad_h * B[None, :, :], axis=1)  # (BLOCK_D, CHUNK)
            grad_delta = tl.sum(through_decay * A[:, :, None], axis=1) + grad_h_B * u
            tl.store(grad_delta_ptr + row + t[None, :], grad_delta, mask=tile)
            tl.store(grad_u_ptr + row + t[None, :], grad_h_B * delta, mask=tile)
            partial = partial_row + n[:, None] * length + t[None, :]
            tl.store(grad_B_ptr + partial, tl.sum(grad_h * (delta * u)[:, None, :], axis=0), mask=matrix_mask)
            tl.store(grad_C_ptr + partial, tl.sum(states * grad_y[:, None, :], axis=0), mask=matrix_mask)
            next_grad = tl.sum(tl.where((t_local == 0)[None, None, :], grad_h, 0.0), axis=2)
        tl.store(grad_A_ptr + (batch * channels + d[:, None]) * state + n[None, :], grad_A, mask=state_mask)


def _groups_of(matrix: torch.Tensor, channels: int) -> int:
    """Channels sharing one B/C row: (D, N) is per channel, (batch, N, L) shared, (batch, G, N, L) grouped."""
    return channels if matrix.dim() == 2 else 1 if matrix.dim() == 3 else matrix.shape[1]


def _kernel_view(matrix: torch.Tensor, groups: int, batch: int, channels: int, length: int) -> torch.Tensor:
    """B or C as a (batch, groups, N, L) tensor for the kernel, a stride-0 view where possible."""
    state = matrix.shape[-2] if matrix.dim() > 2 else matrix.shape[1]
    if matrix.dim() == 2:  # (D, N): the same at every step and batch row
        return matrix[None, :, :, None].expand(batch, channels, state, length)
    if matrix.dim() == 3:  # (batch, N, L)
        return matrix[:, None].expand(batch, groups, state, length)
    if matrix.shape[1] == groups:
        return matrix
    return matrix.repeat_interleave(groups // matrix.shape[1], dim=1)  # grouped beside per-channel: rare


def _to_layout(grad: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(batch, groups, N, L) gradient in the kernel's grouping -> the layout of ``matrix``."""
    if matrix.dim() == 2:
        return grad.sum(dim=(0, 3))
    if matrix.dim() == 3:
        return grad.sum(dim=1)
    batch, groups, state, length = grad.shape
    return grad.reshape(batch, matrix.shape[1], groups // matrix.shape[1], state, length).sum(dim=2)


def _block_d(per_group: int) -> int:
    """Largest power of two <= MAX_BLOCK_D dividing the channels per group (a block stays in one group)."""
    block = 1
    while block * 2 <= MAX_BLOCK_D and per_group % (block * 2) == 0:
        block *= 2
    return block


def _kernel_layout(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> dict:
    batch, channels, length = u.shape
    groups_B, groups_C = _groups_of(B, channels), _groups_of(C, channels)
    if B.dim() == 4 and C.dim() == 4 and groups_B != groups_C:
        raise ValueError(f"B and C must use the same number of groups, got {groups_B} and {groups_C}")
    groups = max(groups_B, groups_C) if 1 in (groups_B, groups_C) or groups_B == groups_C else channels
    per_group = channels // groups
    block_d = _block_d(per_group)
    return {
        "B": _kernel_view(B, groups, batch, channels, length),
        "C": _kernel_view(C, groups, batch, channels, length),
        "per_group": per_group,
        "block_d": block_d,
        "blocks": triton.cdiv(channels, block_d),
        "chunks": triton.cdiv(length, CHUNK),
        "block_n": triton.next_power_of_2(A.shape[1]),
    }


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, order):
        batch, channels, length = u.shape
        state = A.shape[1]
        layout = _kernel_layout(u, A, B, C)
        order_arg = order.contiguous() if order is not None else u  # any pointer when unused
        y = torch.empty_like(u)
        starts = u.new_empty(batch, layout["chunks"], channels, state)
        last = u.new_empty(batch, channels, state)
        _scan_forward_kernel[(batch, layout["blocks"])](
            u, delta, A, layout["B"], layout["C"], y, starts, last, order_arg, length, channels, state, layout["per_group"], layout["chunks"],
            *layout["B"].stride(), *layout["C"].stride(),
            BLOCK_D=layout["block_d"], BLOCK_N=layout["block_n"], CHUNK_T=CHUNK, HAS_ORDER=order is not None,
        )
        ctx.save_for_backward(u, delta, A, B, C, starts, order_arg)
        ctx.has_order = order is not None
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        u, delta, A, B, C, starts, order_arg = ctx.saved_tensors
        batch, channels, length = u.shape
        state = A.shape[1]
        layout = _kernel_layout(u, A, B, C)
        grad_y = grad_y.contiguous() if grad_y is not None else torch.zeros_like(u)
        grad_last = grad_last.contiguous() if grad_last is not None else u.new_zeros(batch, channels, state)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_A = u.new_empty(batch, channels, state)  # per batch row, summed below
        partial_B = u.new_empty(batch, layout["blocks"], state, length)  # per channel block, summed below
        partial_C = u.new_empty(batch, layout["blocks"], state, length)
        _scan_backward_kernel[(batch, layout["blocks"])](
            u, delta, A, layout["B"], layout["C"], starts, grad_y, grad_last, order_arg,
            grad_u, grad_delta, grad_A, partial_B, partial_C,
            length, channels, state, layout["per_group"], layout["chunks"], layout["blocks"],
            *layout["B"].stride(), *layout["C"].stride(),
            BLOCK_D=layout["block_d"], BLOCK_N=layout["block_n"], CHUNK_T=CHUNK, HAS_ORDER=ctx.has_order,
        )
        groups = channels // layout["per_group"]

        def per_group(partials):  # blocks never straddle a group
            return partials.reshape(batch, groups, -1, state, length).sum(dim=2)

        return grad_u, grad_delta, grad_A.sum(dim=0), _to_layout(per_group(partial_B), B), _to_layout(per_group(partial_C), C), None


def _triton_core(u, delta, A, B, C, order):
    return _SelectiveScanTriton.apply(u, delta, A, B, C, order)


selective_scan_triton = fast_backend(_triton_core)
