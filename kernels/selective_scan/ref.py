"""Selective scan (Mamba S6), sequential pure-PyTorch reference: the executable specification.

Semantics follow mamba_ssm's ``selective_scan_fn``:
    delta <- softplus(delta + delta_bias) (when asked)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t          (per channel d and state n)
    y_t = <C_t, h_t> + D * u_t ;  out = y * silu(z) (when z is given)
Shapes: u, delta, z: (batch, D, L); A: (D, N); B, C: (D, N) (time-invariant), (batch, N, L), or
grouped (batch, G, N, L) with D divisible by G; D, delta_bias: (D,). Computes in float32 and returns
u's dtype (the last state in float32). ``order`` (a LongTensor of length L, see scan_orders) scans
step t at position order[t] of every L axis and returns y in the inputs' layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medseg_kernels.scan_orders import scan_in_order


def expand_input_matrix(matrix: torch.Tensor, batch: int, channels: int, length: int) -> torch.Tensor:
    """B or C in any accepted layout -> (batch, channels, length, N) view or tensor (reference only)."""
    if matrix.dim() == 2:  # (D, N), time-invariant
        return matrix[None, :, None, :].expand(batch, channels, length, matrix.shape[1])
    if matrix.dim() == 3:  # (batch, N, L), shared by all channels
        return matrix.transpose(1, 2)[:, None].expand(batch, channels, length, matrix.shape[1])
    groups = matrix.shape[1]  # (batch, G, N, L)
    per_group = matrix.permute(0, 1, 3, 2)  # (batch, G, L, N)
    return per_group.repeat_interleave(channels // groups, dim=1)


def effective_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """delta (batch, D, L) in float32 after the optional bias and softplus (shared by every backend)."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    return F.softplus(delta) if delta_softplus else delta


def skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """y + D * u, then times silu(z); all (batch, D, L) float32 (shared by every backend)."""
    if D is not None:
        y = y + u * D.float()[None, :, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y


def fast_backend(core):
    """A backend with selective_scan_ref's signature from its kernel ``core(u32, delta32, A32, B32,
    C32, order) -> (y, last_state)``: every fast backend shares the framing around its kernel
    (float32 contiguous u and effective delta, the D skip and z gate, u's dtype out)."""

    def backend(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, order=None):
        u32 = u.float().contiguous()
        delta32 = effective_delta(delta, delta_bias, delta_softplus).contiguous()
        y, last_state = core(u32, delta32, A.float().contiguous(), B.float(), C.float(), order)
        y = skip_and_gate(y, u32, D, z).to(u.dtype)
        return (y, last_state) if return_last_state else y

    backend.__doc__ = f"Same signature and results as selective_scan_ref, through {core.__name__}; computes in float32."
    return backend


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    order: torch.Tensor | None = None,
):
    if order is not None:  # the spec of a scan order: gather, scan, put back
        return scan_in_order(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, order)
    dtype_out = u.dtype
    u, A = u.float(), A.float()
    delta = effective_delta(delta, delta_bias, delta_softplus)
    batch, channels, length = u.shape
    B_full = expand_input_matrix(B.float(), batch, channels, length)
    C_full = expand_input_matrix(C.float(), batch, channels, length)
    state = u.new_zeros(batch, channels, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        state = decay * state + (delta[:, :, t] * u[:, :, t])[..., None] * B_full[:, :, t]
        outputs.append((state * C_full[:, :, t]).sum(-1))
    y = skip_and_gate(torch.stack(outputs, dim=-1), u, D, z).to(dtype_out)
    return (y, state) if return_last_state else y
