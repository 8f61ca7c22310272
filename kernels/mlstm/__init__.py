"""mLSTM cell (xLSTM / Vision-LSTM matrix memory) with one dispatcher: ``mlstm(..., backend="auto")``.

Backends, best first: ``cpu`` (chunkwise, linear in sequence length; CPU float tensors),
``triton`` (tiled parallel form with a precomputed exact stabiliser, forward and backward kernels;
CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for testing), ``chunkwise`` (the chunkwise
PyTorch code on any device: the GPU fallback without Triton) and ``ref`` (the quadratic parallel form, runs anywhere: the executable spec, equal to the xlstm
package's ``parallel_stabilized_simple``). ``mlstm_recurrent_ref`` is the same function as a step-by-step
recurrence, kept as a second spec for the tests. Gradients come from autograd on both.
"""

from __future__ import annotations

import torch

from medseg_kernels.mlstm.chunkwise import mlstm_chunkwise
from medseg_kernels.mlstm.ref import EPS, mlstm_parallel_ref, mlstm_recurrent_ref
from medseg_kernels.mlstm.triton_mlstm import mlstm_triton, triton_unavailable_reason
from medseg_kernels.registry import Backend, cpu_float_reason, floating_point_reason, outside_autocast, register_backend, resolve
from medseg_kernels.scan_orders import check_order, gather_steps, scatter_steps

OP = "mlstm"

register_backend(Backend(OP, "cpu", mlstm_chunkwise, cpu_float_reason, "chunkwise: exact stabiliser, batched chunk matmuls, linear in S"))
register_backend(Backend(OP, "triton", mlstm_triton, triton_unavailable_reason, "tiled parallel form, exact precomputed stabiliser, recomputing backward"))
register_backend(Backend(OP, "chunkwise", mlstm_chunkwise, floating_point_reason, "the chunkwise form on any device (batched matmuls)"))
register_backend(Backend(OP, "ref", mlstm_parallel_ref, lambda device, dtype: None, "quadratic parallel form (xlstm's parallel_stabilized_simple)"))


# Triton's tiled parallel form is quadratic in S. On an H200 at S = 4096 (d = 64) its forward and
# backward together were already slower than the chunkwise form (13.6 vs 10.8 ms), and an
# xLSTM-UNet Enc training step at a 96^3 patch (884 736 tokens at the first stage) did not finish in
# 100 s (bench/results/kernels_gpu.json, gpu_models.json). So "auto" takes it up to this length only.
TRITON_AUTO_MAX_LENGTH = 2048


def choose_backend(backend: str, device: torch.device, dtype: torch.dtype, length: int):
    """The backend ``mlstm`` runs: the named one, or the best for this device, dtype and length."""
    chosen = resolve(OP, backend, device, dtype)
    if backend == "auto" and chosen.name == "triton" and length > TRITON_AUTO_MAX_LENGTH:
        return resolve(OP, "chunkwise", device, dtype)
    return chosen


def mlstm(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor, eps: float = EPS, backend: str = "auto",
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """q, k, v: (batch, heads, S, d); i, f gate pre-activations: (batch, heads, S[, 1]) -> (batch, heads, S, d).
    ``order``: step t visits position order[t] (medseg_kernels.scan_orders); h keeps the inputs' layout.
    Every backend works on whole-sequence tensors, so another order costs one gathered copy."""
    if q.dim() != 4 or q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} must agree as (batch, heads, S, d)")
    for name, gate in (("i", i), ("f", f)):
        if tuple(gate.shape) not in (tuple(q.shape[:-1]), (*q.shape[:-1], 1)):
            raise ValueError(f"gate pre-activations {name} must be (batch, heads, S) = {tuple(q.shape[:-1])} or with a trailing 1, got {tuple(gate.shape)}")
    check_order(order, q.shape[-2])
    chosen = choose_backend(backend, q.device, q.dtype, q.shape[-2])
    with outside_autocast(q.device):
        if order is None:
            return chosen.function(q, k, v, i, f, eps)
        gate_dim = -2 if i.dim() == 4 else -1
        q, k, v = (gather_steps(x, order, dim=-2) for x in (q, k, v))
        i, f = (gather_steps(x, order, dim=gate_dim) for x in (i, f))
        return scatter_steps(chosen.function(q, k, v, i, f, eps), order, dim=-2)


__all__ = ["mlstm", "mlstm_chunkwise", "mlstm_parallel_ref", "mlstm_recurrent_ref", "mlstm_triton"]
