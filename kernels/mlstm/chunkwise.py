"""mLSTM, chunkwise form for the CPU: linear in sequence length, big batched matmuls.

The sequence is cut into chunks of ``chunk`` steps. Inside a chunk the quadratic form runs on a
(chunk, chunk) matrix; across chunks the (d, d) matrix memory carries the past. The row-wise
stabiliser of the parallel form is exact here, not approximated: with b_t the forget-gate log-sum
from the chunk start and m_prev the stabiliser at the chunk boundary,
    m_t = b_t + max(m_prev, cummax_{s<=t in chunk}(i_s - b_s)),
so every exponent below is <= 0 and the result equals ``mlstm_parallel_ref`` up to rounding.
Memory per chunk boundary: (batch, heads, d, d); the states of all boundaries are kept for autograd.
Across chunks only a rescale-and-add of the (d, d) memory per chunk remains sequential.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg_kernels.mlstm.ref import EPS, compute_dtype, gate_preactivations, normaliser_floor
from medseg_kernels.numerics import EXP_FLOOR

DEFAULT_CHUNK = 64
_NEG = -1e30  # "no past yet": finite, so that no inf - inf reaches autograd
_EXP_CEILING = 30.0  # masked (future) entries only: keeps exp finite so that 0 * exp stays 0 in the backward


def _exp_nonpositive(x: torch.Tensor) -> torch.Tensor:
    """exp of stabilised log-weights (<= 0), floored (medseg_kernels.numerics: the slow denormal path)."""
    return torch.exp(x.clamp_min(EXP_FLOOR))


class _ChunkStates(torch.autograd.Function):
    """y_0 = 0, y_{n+1} = carry_n y_n + scale_n x_n over chunks n: a loop of two in-place ops per
    chunk on (batch, heads, X) slices, with a hand-written reverse loop for the backward (autograd
    through the loop would record a graph node per op and chunk)."""

    @staticmethod
    def forward(ctx, carry, scale, x):  # carry, scale: (b, h, n); x: (b, h, n, X)
        y = torch.zeros_like(x)
        for n in range(x.shape[2] - 1):
            torch.mul(y[:, :, n], carry[:, :, n, None], out=y[:, :, n + 1])
            y[:, :, n + 1].addcmul_(x[:, :, n], scale[:, :, n, None])
        ctx.save_for_backward(carry, scale, x, y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        carry, scale, x, y = ctx.saved_tensors
        chunks = x.shape[2]
        adjoint = grad_y.clone()  # dL/dy_n, accumulated from the end: gy_n + carry_n * adjoint_{n+1}
        for n in range(chunks - 2, 0, -1):
            adjoint[:, :, n].addcmul_(adjoint[:, :, n + 1], carry[:, :, n, None])
        upstream = adjoint[:, :, 1:]  # dL/dy_{n+1} for n = 0 .. chunks-2
        grad_x = torch.zeros_like(x)
        grad_x[:, :, :-1] = upstream * scale[:, :, :-1, None]
        grad_scale, grad_carry = torch.zeros_like(scale), torch.zeros_like(carry)
        grad_scale[:, :, :-1] = (upstream * x[:, :, :-1]).sum(-1)
        grad_carry[:, :, :-1] = (upstream * y[:, :, :-1]).sum(-1)
        return grad_carry, grad_scale, grad_x


def mlstm_chunkwise(q, k, v, i, f, eps: float = EPS, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """(batch, heads, S, d) -> (batch, heads, S, d); i, f: (batch, heads, S[, 1])."""
    batch, heads, length, dim = q.shape
    dtype = compute_dtype(q)
    igate, log_f = gate_preactivations(i, f, length, dtype)
    chunk = max(1, min(chunk, length))
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    qf, kf, vf = q.to(dtype), k.to(dtype) / math.sqrt(dim), v.to(dtype)
    if pad:  # padded steps come last, so they never reach a real output
        qf, kf, vf = (F.pad(x, (0, 0, 0, pad)) for x in (qf, kf, vf))
        igate = F.pad(igate, (0, pad), value=_NEG)
        log_f = F.pad(log_f, (0, pad))

    def chunked(x):  # (b, h, S, ...) -> (b, h, n, chunk, ...)
        return x.reshape(batch, heads, chunks, chunk, *x.shape[3:])

    # v with a column of ones: every product with it yields the weighted sums of v and, in the last
    # column, the normaliser's sums of weights, so memory and normaliser travel as one (d, d + 1) state
    qc, kc, vc = chunked(qf), chunked(kf), chunked(torch.cat([vf, torch.ones_like(vf[..., :1])], dim=-1))
    local_f = torch.cumsum(chunked(log_f), dim=-1)  # b_t, (b, h, n, c)
    write_log = chunked(igate) - local_f  # i_s - b_s
    running = torch.cummax(write_log, dim=-1).values  # max over s <= t inside the chunk
    chunk_total = local_f[..., -1]  # (b, h, n)

    # Each chunk's own contribution to the memory, stabilised by the chunk's own maximum, for all
    # chunks in one batched matmul.
    local_max = running[..., -1]  # max over the chunk of i_s - b_s, (b, h, n)
    weighted_k = kc * _exp_nonpositive(write_log - local_max[..., None])[..., None]  # (b, h, n, c, d)
    contribution = weighted_k.transpose(-2, -1) @ vc  # (b, h, n, d, d + 1): memory | normaliser
    # The memory at each chunk start mixes the earlier chunks' contributions. With T_j the
    # forget-gate log-sum before chunk j and a_j = local_max_j - T_j, the stabiliser at chunk n is
    # T_n + c_n with c_n = max_{j<n} a_j, and chunk j enters with weight exp(a_j - c_n) <= 1, i.e.
    # memory_{n+1} = exp(c_n - c_{n+1}) memory_n + exp(a_n - c_{n+1}) contribution_n. T grows with
    # the sequence, so this bookkeeping runs in float64 on (b, h, n) tensors; only the bounded
    # factors return to float32.
    before = torch.cumsum(chunk_total.double(), dim=-1) - chunk_total.double()  # T_n, exclusive
    entry = local_max.double() - before  # a_j
    running_entry = torch.cummax(entry, dim=-1).values  # max_{j<=n} a_j = c_{n+1}
    previous_max = torch.cat([torch.full_like(entry[..., :1], float("-inf")), running_entry[..., :-1]], dim=-1)  # c_n
    carry = torch.exp(previous_max - running_entry).to(dtype)  # (b, h, n): exp(c_n - c_{n+1})
    scale = torch.exp(entry - running_entry).to(dtype)
    state = contribution.reshape(batch, heads, chunks, dim * (dim + 1))
    state_in = _ChunkStates.apply(carry, scale, state).reshape(contribution.shape)  # memory | normaliser before each chunk
    stabiliser_in = (before + previous_max).clamp_min(_NEG).to(dtype)  # (b, h, n); "no past" at n = 0

    # Outputs: past (through the boundary memory) plus the causal intra-chunk quadratic part.
    row_max = torch.maximum(stabiliser_in[..., None], running)  # m_t - b_t, (b, h, n, c)
    past_weight = _exp_nonpositive(stabiliser_in[..., None] - row_max)[..., None]  # (b, h, n, c, 1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    log_weight = (write_log[..., None, :] - row_max[..., :, None]).clamp(EXP_FLOOR, _EXP_CEILING)  # (b, h, n, t, s)
    scores = (qc @ kc.transpose(-2, -1)) * torch.exp(log_weight).masked_fill(~causal, 0.0)
    sums = torch.baddbmm(  # (b * h * n, c, d + 1): numerator | row sum of the weights
        (scores @ vc).reshape(-1, chunk, dim + 1), (qc * past_weight).reshape(-1, chunk, dim), state_in.reshape(-1, dim, dim + 1)
    ).reshape(batch, heads, chunks, chunk, dim + 1)
    numerator, row_sum = sums[..., :dim], sums[..., dim:]
    stabiliser_t = (local_f + row_max)[..., None]  # m_t
    denominator = torch.maximum(row_sum.abs(), normaliser_floor(stabiliser_t)) + eps
    out = (numerator / denominator).reshape(batch, heads, chunks * chunk, dim)
    return out[:, :, :length].to(q.dtype)
