"""mLSTM (the matrix-memory cell of xLSTM / Vision-LSTM), pure-PyTorch references: the executable spec.

Stabilised semantics of the xlstm package (``parallel_stabilized_simple``), per batch and head:
    log D[t, s] = sum_{r=s+1..t} logsigmoid(f_r) + i_s      for s <= t (else -inf)
    m_t = max_s log D[t, s]                                    (row-wise stabiliser)
    C[t, s] = (q_t . k_s / sqrt(d)) * exp(log D[t, s] - m_t)
    h_t = sum_s C[t, s] v_s / (max(|sum_s C[t, s]|, exp(-m_t)) + eps)
(exp(-m_t) with its exponent capped at 80, medseg_kernels.numerics: finite for any finite gates.)
Shapes: q, k, v: (batch, heads, S, d); i, f (gate pre-activations): (batch, heads, S) or
(batch, heads, S, 1). Computes in float32 (float64 for float64 input) and returns q's dtype.

Two forms of the same function: ``mlstm_parallel_ref`` (quadratic in S, what xLSTM-UNet runs) and
``mlstm_recurrent_ref`` (the matrix-memory recurrence, one step at a time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medseg_kernels.numerics import NORMALISER_EXP_CEILING

EPS = 1e-6


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (exact checks); everything else computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def gate_preactivations(i: torch.Tensor, f: torch.Tensor, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, heads, S[, 1]) pre-activations -> input gate and log forget gate, (batch, heads, S)."""
    if i.dim() == 4:
        i, f = i.squeeze(-1), f.squeeze(-1)
    if i.shape[-1] != length or f.shape[-1] != length:
        raise ValueError(f"gate pre-activations have length {i.shape[-1]}/{f.shape[-1]}, queries have {length}")
    return i.to(dtype), F.logsigmoid(f.to(dtype))


def normaliser_floor(stabiliser: torch.Tensor) -> torch.Tensor:
    """exp(-m) with the exponent capped (medseg_kernels.numerics): finite for any finite gates."""
    return torch.exp((-stabiliser).clamp_max(NORMALISER_EXP_CEILING))


def mlstm_parallel_ref(q, k, v, i, f, eps: float = EPS) -> torch.Tensor:
    """Quadratic parallel form: (batch, heads, S, d) -> (batch, heads, S, d)."""
    length, dim = q.shape[-2], q.shape[-1]
    dtype = compute_dtype(q)
    igate, log_f = gate_preactivations(i, f, length, dtype)
    cumulative = torch.cumsum(log_f, dim=-1)  # (b, h, S)
    log_d = cumulative[..., :, None] - cumulative[..., None, :] + igate[..., None, :]  # (b, h, t, s)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    stabiliser = log_d.amax(dim=-1, keepdim=True)  # (b, h, S, 1)
    scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) / math.sqrt(dim) * torch.exp(log_d - stabiliser)
    normaliser = torch.maximum(scores.sum(dim=-1, keepdim=True).abs(), normaliser_floor(stabiliser))
    return ((scores / (normaliser + eps)) @ v.to(dtype)).to(q.dtype)


def mlstm_recurrent_ref(q, k, v, i, f, eps: float = EPS) -> torch.Tensor:
    """Step-by-step recurrence over the (d, d) matrix memory; same output as the parallel form."""
    batch, heads, length, dim = q.shape
    dtype = compute_dtype(q)
    igate, log_f = gate_preactivations(i, f, length, dtype)
    qf, kf, vf = q.to(dtype), k.to(dtype) / math.sqrt(dim), v.to(dtype)
    memory = q.new_zeros(batch, heads, dim, dim, dtype=dtype)  # sum of weighted k v^T
    normaliser = q.new_zeros(batch, heads, dim, dtype=dtype)  # sum of weighted k
    stabiliser = q.new_full((batch, heads), float("-inf"), dtype=dtype)
    outputs = []
    for t in range(length):
        new_stabiliser = torch.maximum(log_f[..., t] + stabiliser, igate[..., t])
        decay = torch.exp(log_f[..., t] + stabiliser - new_stabiliser)[..., None]
        write = torch.exp(igate[..., t] - new_stabiliser)[..., None]
        memory = decay[..., None] * memory + write[..., None] * kf[..., t, :, None] * vf[..., t, None, :]
        normaliser = decay * normaliser + write * kf[..., t, :]
        numerator = (qf[..., t, None, :] @ memory).squeeze(-2)
        denominator = torch.maximum((qf[..., t, :] * normaliser).sum(-1).abs(), normaliser_floor(new_stabiliser))
        outputs.append(numerator / (denominator[..., None] + eps))
        stabiliser = new_stabiliser
    return torch.stack(outputs, dim=-2).to(q.dtype)
