"""Traversal orders for scanning 2D/3D feature maps as sequences (Vision Mamba, VMamba, Vision-LSTM).

A feature map (batch, channels, *spatial) flattens row-major to (batch, channels, L). An order is a
LongTensor ``index`` of length L: step t of the scan visits flat position ``index[t]``. Kernels take
the order and index memory with it (loading step t from ``index[t]`` and writing its output back
there), so no permuted copy of the feature map is made per direction, and outputs come back in the
feature map's own layout.

Named orders: ``forward`` (row-major, the last axis fastest; what U-Mamba scans), ``backward`` (its
reverse), and for every axis ``a``: ``axis{a}`` / ``axis{a}_backward``, the row-major order of the
map with axis ``a`` moved last (so it runs fastest): in 2D, ``axis0`` is the column-wise scan of
VMamba's cross-scan; in 3D, ``axis0`` walks across slices at each in-plane position (SegMamba's
inter-slice direction).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

_AXIS_ORDER = re.compile(r"^axis(\d)(_backward)?$")


def traversal(spatial_shape: Sequence[int], fastest_axis: int | None = None, reverse: bool = False, device=None) -> torch.Tensor:
    """Order visiting the map row-major with ``fastest_axis`` moved last (None: as stored), optionally reversed."""
    ndim = len(spatial_shape)
    positions = torch.arange(math.prod(int(s) for s in spatial_shape), device=device).reshape(*spatial_shape)
    if fastest_axis is not None:
        if not 0 <= fastest_axis < ndim:
            raise ValueError(f"axis {fastest_axis} is not an axis of a {ndim}D map")
        positions = positions.movedim(fastest_axis, -1)
    order = positions.reshape(-1)
    return order.flip(0) if reverse else order


def named_order(name: str, spatial_shape: Sequence[int], device=None) -> torch.Tensor:
    if name in ("forward", "backward"):
        return traversal(spatial_shape, None, name == "backward", device)
    match = _AXIS_ORDER.match(name)
    if not match:
        raise ValueError(f"unknown scan order '{name}' (forward, backward, axis<k>, axis<k>_backward)")
    return traversal(spatial_shape, int(match.group(1)), bool(match.group(2)), device)


def check_order(order: torch.Tensor | None, length: int) -> None:
    """An order must be a 1D integer tensor of the sequence's length (a permutation: not checked for speed)."""
    if order is None:
        return
    if order.dim() != 1 or order.shape[0] != length or order.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"scan order must be a 1D integer tensor of length {length}, got {tuple(order.shape)} {order.dtype}")


def gather_steps(x: torch.Tensor, order: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """x with its sequence axis ``dim`` put in scan order (a copy; for backends that cannot index)."""
    return x if order is None else x.index_select(dim, order)


def scatter_steps(x: torch.Tensor, order: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Inverse of gather_steps: scan-ordered values back to their feature-map positions."""
    if order is None:
        return x
    return x.index_select(dim, torch.argsort(order))


def scan_in_order(scan, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False, order=None):
    """Run a selective scan that cannot index memory on gathered copies, then put y back in place."""
    if order is None:
        return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    B, C = (gather_steps(m, order) if m.dim() > 2 else m for m in (B, C))
    z = gather_steps(z, order) if z is not None else None
    result = scan(gather_steps(u, order), gather_steps(delta, order), A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        return scatter_steps(result[0], order), result[1]
    return scatter_steps(result, order)
