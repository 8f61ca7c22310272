"""Shape checks for selective_scan's arguments, so that a wrong shape fails with the argument's name
and the shape expected, before any backend reshapes it into an unreadable error."""

from __future__ import annotations

import torch


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def check_arguments(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> None:
    """u, delta, z: (batch, D, L); A: (D, N); B, C: (D, N), (batch, N, L) or (batch, G, N, L) with G
    dividing D; D, delta_bias: (D,). Raises ValueError naming the first argument that disagrees."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, length), got shape {_shape(u)}")
    batch, channels, length = u.shape
    for name, x in (("delta", delta), ("z", z)):
        if x is not None and _shape(x) != _shape(u):
            raise ValueError(f"{name} must have u's shape {_shape(u)} (batch, channels, length), got {_shape(x)}")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, state), got {_shape(A)}")
    state = A.shape[1]
    for name, x in (("B", B), ("C", C)):
        accepted = {
            2: x.dim() == 2 and _shape(x) == (channels, state),
            3: x.dim() == 3 and _shape(x) == (batch, state, length),
            4: x.dim() == 4 and x.shape[0] == batch and x.shape[2:] == (state, length) and x.shape[1] > 0 and channels % x.shape[1] == 0,
        }
        if not accepted.get(x.dim(), False):
            raise ValueError(
                f"{name} must be ({channels}, {state}) time-invariant, ({batch}, {state}, {length}) per position, or "
                f"({batch}, G, {state}, {length}) with G dividing {channels} channels; got {_shape(x)}"
            )
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and _shape(x) != (channels,):
            raise ValueError(f"{name} must be (channels={channels},), got {_shape(x)}")
