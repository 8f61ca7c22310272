"""mLSTM, chunkwise form for the CPU: linear in sequence length, big batched matmuls.

The sequence is cut into chunks of ``chunk`` steps. Inside a chunk the quadratic form runs on a
(chunk, chunk) matrix; across chunks the (d, d) matrix memory carries the past. The row-wise
stabiliser of the parallel form is exact here, not approximated: with b_t the forget-gate log-sum
from the chunk start and m_prev the stabiliser at the chunk boundary,
    m_t = b_t + max(m_prev, cummax_{s<=t in chunk}(i_s - b_s)),
so every exponent below is <= 0 and the result equals ``mlstm_parallel_ref`` up to rounding.
Memory per chunk boundary: (batch, heads, d, d); the states of all boundaries are kept for autograd.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg_kernels.mlstm.ref import EPS, compute_dtype, gate_preactivations

DEFAULT_CHUNK = 64
_NEG = -1e30  # "no past yet": finite, so that no inf - inf reaches autograd


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

    qc, kc, vc = chunked(qf), chunked(kf), chunked(vf)
    local_f = torch.cumsum(chunked(log_f), dim=-1)  # b_t, (b, h, n, c)
    write_log = chunked(igate) - local_f  # i_s - b_s
    running = torch.cummax(write_log, dim=-1).values  # max over s <= t inside the chunk
    chunk_total = local_f[..., -1]  # (b, h, n)

    # Each chunk's own contribution to the memory, stabilised by the chunk's own maximum, for all
    # chunks in one batched matmul; then the boundary states, sequential over chunks but only a
    # rescale-and-add of (d, d) matrices per step.
    local_max = running[..., -1]  # max over the chunk of i_s - b_s, (b, h, n)
    weighted_k = kc * torch.exp(write_log - local_max[..., None])[..., None]  # (b, h, n, c, d)
    contribution = weighted_k.transpose(-2, -1) @ vc  # (b, h, n, d, d)
    contribution_n = weighted_k.sum(dim=-2)  # (b, h, n, d)
    memories, normalisers, stabilisers = [], [], []
    memory = qf.new_zeros(batch, heads, dim, dim)
    normaliser = qf.new_zeros(batch, heads, dim)
    stabiliser = qf.new_full((batch, heads), _NEG)
    for n in range(chunks):
        memories.append(memory)
        normalisers.append(normaliser)
        stabilisers.append(stabiliser)
        new = chunk_total[..., n] + torch.maximum(stabiliser, local_max[..., n])
        carry = torch.exp(chunk_total[..., n] + stabiliser - new)[..., None]
        scale = torch.exp(chunk_total[..., n] + local_max[..., n] - new)[..., None]
        memory = carry[..., None] * memory + scale[..., None] * contribution[:, :, n]
        normaliser = carry * normaliser + scale * contribution_n[:, :, n]
        stabiliser = new
    memory_in = torch.stack(memories, dim=2)  # (b, h, n, d, d)
    normaliser_in = torch.stack(normalisers, dim=2)  # (b, h, n, d)
    stabiliser_in = torch.stack(stabilisers, dim=2)  # (b, h, n)

    # Outputs: past (through the boundary memory) plus the causal intra-chunk quadratic part.
    row_max = torch.maximum(stabiliser_in[..., None], running)  # m_t - b_t, (b, h, n, c)
    past_weight = torch.exp(stabiliser_in[..., None] - row_max)[..., None]  # (b, h, n, c, 1)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    log_weight = (write_log[..., None, :] - row_max[..., :, None]).masked_fill(~causal, _NEG)  # (b, h, n, t, s)
    scores = (qc @ kc.transpose(-2, -1)) * torch.exp(log_weight)
    numerator = scores @ vc + past_weight * (qc @ memory_in)
    row_sum = scores.sum(dim=-1, keepdim=True) + past_weight * (qc @ normaliser_in[..., None])
    stabiliser_t = (local_f + row_max)[..., None]  # m_t
    denominator = torch.maximum(row_sum.abs(), torch.exp(-stabiliser_t)) + eps
    out = (numerator / denominator).reshape(batch, heads, chunks * chunk, dim)
    return out[:, :, :length].to(q.dtype)
