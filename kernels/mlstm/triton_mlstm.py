"""mLSTM, Triton GPU path: the stabilised parallel form in tiles, forward and backward (also runs on
CPU tensors under TRITON_INTERPRET=1, which is how the tests check it without a GPU).

Like flash attention, one program owns BLOCK query rows of one (batch, head) and walks the key blocks
up to the diagonal, keeping only a (BLOCK, d) accumulator: memory is linear in S, nothing (S, S) is
stored. Two things make the tiles cheap and exact:
- The row stabiliser m_t = max_s log D[t, s] is known before the kernel runs. With F the cumulative
  log forget gate, m_t = F_t + cummax_{s<=t}(i_s - F_s): an O(S) scan done in float64 in PyTorch.
  So every tile exponentiates log D - m <= 0 directly, with no online rescaling.
- F reaches thousands on long sequences, where F_t - F_s in float32 loses digits. F is split into
  a float64 value per block start and a small float32 offset inside the block; the kernel subtracts
  the two block values in float64 and only then rounds.
The backward recomputes the tiles: one kernel per query block (dq), one per key block (dk, dv).
Gradients of the gates come back through the row and column sums of dC * C and through the
stabiliser's argmax, in PyTorch. Semantics: medseg_kernels.mlstm.ref.mlstm_parallel_ref.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg_kernels.mlstm.ref import EPS, gate_preactivations, normaliser_floor
from medseg_kernels.numerics import NORMALISER_EXP_CEILING
from medseg_kernels.triton_support import tl, triton, triton_unavailable_reason

def block_rows(block_d: int) -> int:
    """Sequence rows per tile for a head dimension padded to ``block_d``. The tiles of q, k, v and the
    accumulators sit in shared memory: 64 rows at d = 256 asked an H200 for 345 KB (limit 227 KB),
    so rows shrink as d grows, keeping rows x d <= 8192."""
    return max(16, min(64, 8192 // block_d))


def _block_d(dim: int) -> int:
    if dim > 512:  # 16 rows x 1024 would again exceed a GPU's shared memory
        raise ValueError(f"mlstm backend 'triton' supports head dimensions up to 512, not {dim}: use backend='chunkwise'")
    return max(16, triton.next_power_of_2(dim))

__all__ = ["mlstm_triton", "triton_unavailable_reason"]


if triton is not None:

    @triton.jit
    def _log_weights(
        block_start_ptr, offset_ptr, igate_ptr, row, t_block, s_block, t, s, mask_t, mask_s, log_f_t, stabiliser_t,
    ):
        # log D[t, s] - m_t for one tile: <= 0 where s <= t, -inf elsewhere (so exp gives 0)
        gap = (tl.load(block_start_ptr + row + t_block) - tl.load(block_start_ptr + row + s_block)).to(tl.float32)
        log_f_s = tl.load(offset_ptr + s, mask=mask_s, other=0.0)
        igate_s = tl.load(igate_ptr + s, mask=mask_s, other=0.0)
        log_w = (log_f_t[:, None] - log_f_s[None, :]) + gap + igate_s[None, :] - stabiliser_t[:, None]
        keep = (s[None, :] <= t[:, None]) & mask_s[None, :] & mask_t[:, None]
        return tl.where(keep, log_w, float("-inf"))

    @triton.jit
    def _rows(ptr, base, rows, d, mask_rows, mask_d, dim):
        # a (rows, BLOCK_D) float32 tile of a contiguous (batch * heads, S, d) tensor
        return tl.load(ptr + (base + rows)[:, None] * dim + d[None, :], mask=mask_rows[:, None] & mask_d[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _query_side(q_ptr, grad_num_ptr, grad_row_sum_ptr, offset_ptr, stabiliser_ptr, base, t, d, mask_t, mask_d, dim):
        # what the backward needs of query rows t: q, dL/dA, dL/dR, in-block forget offset, stabiliser
        q = _rows(q_ptr, base, t, d, mask_t, mask_d, dim)
        grad_num = _rows(grad_num_ptr, base, t, d, mask_t, mask_d, dim)
        grad_row_sum = tl.load(grad_row_sum_ptr + base + t, mask=mask_t, other=0.0)
        log_f_t = tl.load(offset_ptr + base + t, mask=mask_t, other=0.0)
        stabiliser_t = tl.load(stabiliser_ptr + base + t, mask=mask_t, other=0.0)
        return q, grad_num, grad_row_sum, log_f_t, stabiliser_t

    @triton.jit
    def _tile_gradients(q, k, v, grad_num, grad_row_sum, weight, scale):
        # C = (q k^T) scale weight; dL/dC = dL/dA v^T + dL/dR; returns q k^T and dL/d(q k^T)
        scores_qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        grad_qk = (tl.dot(grad_num, tl.trans(v), input_precision="ieee") + grad_row_sum[:, None]) * weight * scale
        return scores_qk, grad_qk

    @triton.jit
    def _mlstm_forward_kernel(
        q_ptr, k_ptr, v_ptr, igate_ptr, offset_ptr, block_start_ptr, stabiliser_ptr, h_ptr, row_sum_ptr,
        length, dim, blocks, scale, eps,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, FLOOR_EXP_CEILING: tl.constexpr,
    ):
        sequence = tl.program_id(0)  # one (batch, head)
        t_block = tl.program_id(1)
        t = t_block * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        mask_t, mask_d = t < length, d < dim
        base = sequence * length  # (batch * heads, S) gate tensors
        q = _rows(q_ptr, base, t, d, mask_t, mask_d, dim)
        log_f_t = tl.load(offset_ptr + base + t, mask=mask_t, other=0.0)
        stabiliser_t = tl.load(stabiliser_ptr + base + t, mask=mask_t, other=0.0)
        numerator = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        row_sum = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for s_block in range(0, t_block + 1):
            s = s_block * BLOCK_T + tl.arange(0, BLOCK_T)
            mask_s = s < length
            k, v = _rows(k_ptr, base, s, d, mask_s, mask_d, dim), _rows(v_ptr, base, s, d, mask_s, mask_d, dim)
            log_w = _log_weights(
                block_start_ptr, offset_ptr + base, igate_ptr + base, sequence * blocks, t_block, s_block, t, s, mask_t, mask_s,
                log_f_t, stabiliser_t,
            )
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale * tl.exp(log_w)
            numerator += tl.dot(scores, v, input_precision="ieee")
            row_sum += tl.sum(scores, axis=1)
        normaliser = tl.maximum(tl.abs(row_sum), tl.exp(tl.minimum(-stabiliser_t, FLOOR_EXP_CEILING))) + eps
        tl.store(h_ptr + (base + t)[:, None] * dim + d[None, :], numerator / normaliser[:, None], mask=mask_t[:, None] & mask_d[None, :])
        tl.store(row_sum_ptr + base + t, row_sum, mask=mask_t)

    @triton.jit
    def _mlstm_backward_query_kernel(
        q_ptr, k_ptr, v_ptr, igate_ptr, offset_ptr, block_start_ptr, stabiliser_ptr, grad_num_ptr, grad_row_sum_ptr,
        grad_q_ptr, row_p_ptr,
        length, dim, blocks, scale,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        sequence = tl.program_id(0)
        t_block = tl.program_id(1)
        t = t_block * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        mask_t, mask_d = t < length, d < dim
        base = sequence * length
        q, grad_num, grad_row_sum, log_f_t, stabiliser_t = _query_side(
            q_ptr, grad_num_ptr, grad_row_sum_ptr, offset_ptr, stabiliser_ptr, base, t, d, mask_t, mask_d, dim,
        )
        grad_q = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        row_p = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for s_block in range(0, t_block + 1):
            s = s_block * BLOCK_T + tl.arange(0, BLOCK_T)
            mask_s = s < length
            k, v = _rows(k_ptr, base, s, d, mask_s, mask_d, dim), _rows(v_ptr, base, s, d, mask_s, mask_d, dim)
            weight = tl.exp(_log_weights(
                block_start_ptr, offset_ptr + base, igate_ptr + base, sequence * blocks, t_block, s_block, t, s, mask_t, mask_s,
                log_f_t, stabiliser_t,
            ))
            scores_qk, grad_qk = _tile_gradients(q, k, v, grad_num, grad_row_sum, weight, scale)
            grad_q += tl.dot(grad_qk, k, input_precision="ieee")
            row_p += tl.sum(grad_qk * scores_qk, axis=1)  # dC * C: the gradient of log D[t, s]
        tl.store(grad_q_ptr + (base + t)[:, None] * dim + d[None, :], grad_q, mask=mask_t[:, None] & mask_d[None, :])
        tl.store(row_p_ptr + base + t, row_p, mask=mask_t)

    @triton.jit
    def _mlstm_backward_key_kernel(
        q_ptr, k_ptr, v_ptr, igate_ptr, offset_ptr, block_start_ptr, stabiliser_ptr, grad_num_ptr, grad_row_sum_ptr,
        grad_k_ptr, grad_v_ptr, column_p_ptr,
        length, dim, blocks, scale,
        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        sequence = tl.program_id(0)
        s_block = tl.program_id(1)
        s = s_block * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        mask_s, mask_d = s < length, d < dim
        base = sequence * length
        k, v = _rows(k_ptr, base, s, d, mask_s, mask_d, dim), _rows(v_ptr, base, s, d, mask_s, mask_d, dim)
        grad_k = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        grad_v = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        column_p = tl.zeros((BLOCK_T,), dtype=tl.float32)
        for t_block in range(s_block, blocks):
            t = t_block * BLOCK_T + tl.arange(0, BLOCK_T)
            mask_t = t < length
            q, grad_num, grad_row_sum, log_f_t, stabiliser_t = _query_side(
                q_ptr, grad_num_ptr, grad_row_sum_ptr, offset_ptr, stabiliser_ptr, base, t, d, mask_t, mask_d, dim,
            )
            weight = tl.exp(_log_weights(
                block_start_ptr, offset_ptr + base, igate_ptr + base, sequence * blocks, t_block, s_block, t, s, mask_t, mask_s,
                log_f_t, stabiliser_t,
            ))  # (t, s)
            scores_qk, grad_qk = _tile_gradients(q, k, v, grad_num, grad_row_sum, weight, scale)
            grad_v += tl.dot(tl.trans(scores_qk * scale * weight), grad_num, input_precision="ieee")
            grad_k += tl.dot(tl.trans(grad_qk), q, input_precision="ieee")
            column_p += tl.sum(grad_qk * scores_qk, axis=0)
        tile_s = (base + s)[:, None] * dim + d[None, :]
        tl.store(grad_k_ptr + tile_s, grad_k, mask=mask_s[:, None] & mask_d[None, :])
        tl.store(grad_v_ptr + tile_s, grad_v, mask=mask_s[:, None] & mask_d[None, :])
        tl.store(column_p_ptr + base + s, column_p, mask=mask_s)


def _gate_layout(igate: torch.Tensor, log_f: torch.Tensor, block: int) -> dict:
    """Per (batch * heads, S) gates -> what the kernels read, all computed in float64 first.

    cumulative F_t = sum_{r<=t} log f_r; stabiliser m_t = F_t + max_{s<=t}(i_s - F_s) with the
    argmax kept for its gradient; F split into block starts (float64) and in-block offsets (float32).
    """
    sequences, length = igate.shape
    blocks = triton.cdiv(length, block)
    cumulative = torch.cumsum(log_f.double(), dim=-1)
    best, best_at = torch.cummax(igate.double() - cumulative, dim=-1)
    stabiliser = (cumulative + best).float()
    padded = F.pad(cumulative, (0, blocks * block - length)).reshape(sequences, blocks, block)
    block_start = padded[..., 0].contiguous()  # (sequences, blocks) float64
    offset = (padded - block_start[..., None]).reshape(sequences, -1)[:, :length].float().contiguous()
    return {"offset": offset, "block_start": block_start, "stabiliser": stabiliser.contiguous(), "best_at": best_at, "blocks": blocks}


class _MLSTMTriton(torch.autograd.Function):
    """q, k, v: (batch * heads, S, d) contiguous; igate, log_f: (batch * heads, S) float32."""

    @staticmethod
    def forward(ctx, q, k, v, igate, log_f, eps):
        sequences, length, dim = q.shape
        block_d = _block_d(dim)
        block = block_rows(block_d)
        gates = _gate_layout(igate, log_f, block)
        h = torch.empty(sequences, length, dim, dtype=torch.float32, device=q.device)
        row_sum = torch.empty(sequences, length, dtype=torch.float32, device=q.device)
        _mlstm_forward_kernel[(sequences, gates["blocks"])](
            q, k, v, igate, gates["offset"], gates["block_start"], gates["stabiliser"], h, row_sum,
            length, dim, gates["blocks"], 1.0 / math.sqrt(dim), eps, BLOCK_T=block, BLOCK_D=block_d,
            FLOOR_EXP_CEILING=NORMALISER_EXP_CEILING,
        )
        ctx.save_for_backward(q, k, v, igate, gates["offset"], gates["block_start"], gates["stabiliser"], gates["best_at"], h, row_sum)
        ctx.eps = eps
        return h

    @staticmethod
    def backward(ctx, grad_h):
        q, k, v, igate, offset, block_start, stabiliser, best_at, h, row_sum = ctx.saved_tensors
        sequences, length, dim = q.shape
        blocks = block_start.shape[1]
        # h = A / n with n = max(|R|, exp(-m)) + eps: per-row factors first, in PyTorch
        floor = normaliser_floor(stabiliser)
        normaliser = torch.maximum(row_sum.abs(), floor) + ctx.eps
        grad_h = grad_h.float()
        grad_num = (grad_h / normaliser[..., None]).contiguous()  # dL/dA
        grad_normaliser = -(grad_h * h).sum(-1) / normaliser
        uses_row_sum = row_sum.abs() >= floor
        grad_row_sum = torch.where(uses_row_sum, grad_normaliser * torch.sign(row_sum), 0.0).contiguous()
        floor_capped = -stabiliser > NORMALISER_EXP_CEILING  # a constant there: no gradient to m
        grad_stabiliser = torch.where(uses_row_sum | floor_capped, 0.0, -grad_normaliser * floor)

        grad_q = torch.empty(sequences, length, dim, dtype=torch.float32, device=q.device)
        grad_k, grad_v = torch.empty_like(grad_q), torch.empty_like(grad_q)
        row_p = torch.empty(sequences, length, dtype=torch.float32, device=q.device)
        column_p = torch.empty_like(row_p)
        block_d = _block_d(dim)
        block = block_rows(block_d)
        common = (igate, offset, block_start, stabiliser, grad_num, grad_row_sum)
        _mlstm_backward_query_kernel[(sequences, blocks)](
            q, k, v, *common, grad_q, row_p, length, dim, blocks, 1.0 / math.sqrt(dim), BLOCK_T=block, BLOCK_D=block_d,
        )
        _mlstm_backward_key_kernel[(sequences, blocks)](
            q, k, v, *common, grad_k, grad_v, column_p, length, dim, blocks, 1.0 / math.sqrt(dim), BLOCK_T=block, BLOCK_D=block_d,
        )
        # log D[t, s] - m_t = F_t - F_s + i_s - m_t, and m_t = F_t + i_a - F_a at its argmax a = best_at[t]
        grad_stabiliser = (grad_stabiliser - row_p).double()
        grad_igate = column_p.double().scatter_add(-1, best_at, grad_stabiliser)
        grad_cumulative = (row_p - column_p).double() + grad_stabiliser
        grad_cumulative = grad_cumulative.scatter_add(-1, best_at, -grad_stabiliser)
        grad_log_f = grad_cumulative.flip(-1).cumsum(-1).flip(-1)  # F is a cumulative sum of log f
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_igate.float(), grad_log_f.float(), None


def mlstm_triton(q, k, v, i, f, eps: float = EPS) -> torch.Tensor:
    """(batch, heads, S, d) -> (batch, heads, S, d); i, f: (batch, heads, S[, 1]). Computes in float32."""
    batch, heads, length, dim = q.shape
    igate, log_f = gate_preactivations(i, f, length, torch.float32)

    def rows(x):
        return x.reshape(batch * heads, *x.shape[2:]).contiguous()

    h = _MLSTMTriton.apply(rows(q), rows(k), rows(v), rows(igate), rows(log_f), eps)
    return h.reshape(batch, heads, length, dim).to(q.dtype)
