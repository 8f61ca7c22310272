"""Vision-LSTM (ViL) layer over the positions of a 2D/3D feature map, on medseg_kernels' mLSTM.

One pre-norm mLSTM block (ViL's), on the map's positions flattened into a sequence:

    LayerNorm -> up-projection to 2E channels, split into x and gate z (E = 2C)
    -> short convolution on x: ViL v1's causal depthwise conv1d (k=4) along the traversal, or
       ViL v2's depthwise 2D/3D conv (k=3) on the map ("map")
    -> SiLU -> q, k from the conv output and v from x, each by a head-wise linear projection
    -> input and forget gates from (q, k, v), one per head; forget-gate biases spread 3..6 as in ViL;
       both soft-capped at +-15 (xLSTM 7B's stabilisation)
    -> mLSTM cell (matrix memory; the chunkwise kernel on CPU, Triton on GPU, linear in positions)
    -> per-head normalisation -> + learnable skip of the conv output -> x SiLU(z)
    -> down-projection -> added back to the input

``direction`` is the traversal, any medseg_kernels.scan_orders name: "forward" (row-major, the last
axis fastest), "backward" (its reverse), "axis<k>" / "axis<k>_backward" (row-major with axis k
fastest, e.g. across slices in 3D); ViL alternates forward and backward from block to block. The recurrence always runs in float32, also
inside bf16/fp16 autocast (exponential gating overflows in half precision)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg_kernels.mlstm import mlstm
from medseg_kernels.scan_orders import named_order

CONVOLUTIONS = ("causal1d", "map")
GATE_CAP = 15.0  # gate pre-activations are soft-capped at +-15, as in xLSTM 7B: uncapped input gates
# grew past 80 within 100 AdamW steps on the demo and the mLSTM backward overflowed (NaN)


def soft_cap(x: torch.Tensor, cap: float = GATE_CAP) -> torch.Tensor:
    return cap * torch.tanh(x / cap)


class HeadwiseLinear(nn.Module):
    """A block-diagonal linear map: each head's channels are projected on their own."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, channels // heads
        self.weight = nn.Parameter(torch.randn(heads, self.head_dim, self.head_dim) * self.head_dim**-0.5)
        self.bias = nn.Parameter(torch.zeros(heads, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, L, E) -> (B, heads, L, E / heads)."""
        batch, length, _ = x.shape
        x = x.view(batch, length, self.heads, self.head_dim)
        return (torch.einsum("blhd,hde->bhle", x, self.weight) + self.bias[None, :, None, :]).contiguous()


class ViLLayer(nn.Module):
    def __init__(
        self, channels: int, ndim: int, heads: int = 4, expand: int = 2, conv: str = "causal1d", conv_width: int = 4,
        direction: str = "forward", backend: str = "auto",
    ):
        super().__init__()
        if conv not in CONVOLUTIONS:
            raise ValueError(f"ViL convolution must be one of {CONVOLUTIONS}, got {conv!r}")
        named_order(direction, [2] * ndim)  # an unknown order fails here, not at the first forward
        inner = expand * channels
        heads = max(1, min(heads, inner))
        while inner % heads:
            heads -= 1
        self.heads, self.conv_kind, self.direction, self.backend = heads, conv, direction, backend
        self.norm = nn.LayerNorm(channels)
        self.up_proj = nn.Linear(channels, 2 * inner, bias=False)
        if conv == "causal1d":
            self.conv = nn.Conv1d(inner, inner, conv_width, groups=inner, padding=conv_width - 1)
        else:
            conv_nd = nn.Conv2d if ndim == 2 else nn.Conv3d
            self.conv = conv_nd(inner, inner, 3, groups=inner, padding=1)
        self.q_proj, self.k_proj, self.v_proj = (HeadwiseLinear(inner, heads) for _ in range(3))
        self.input_gate = nn.Linear(3 * inner, heads)
        self.forget_gate = nn.Linear(3 * inner, heads)
        self.out_norm = nn.GroupNorm(heads, inner)
        self.skip = nn.Parameter(torch.ones(inner))
        self.down_proj = nn.Linear(inner, channels, bias=False)
        with torch.no_grad():  # ViL: input gate starts near exp(0) with a small spread, forget gates remember
            nn.init.zeros_(self.input_gate.weight)
            nn.init.normal_(self.input_gate.bias, std=0.1)
            nn.init.zeros_(self.forget_gate.weight)
            self.forget_gate.bias.copy_(torch.linspace(3.0, 6.0, heads))
            nn.init.normal_(self.down_proj.weight, std=0.02)  # small: a fresh layer starts near the identity

    def _short_conv(self, x: torch.Tensor, spatial: list[int]) -> torch.Tensor:
        """x: (B, L, E) in traversal order -> (B, L, E)."""
        length = x.shape[1]
        if self.conv_kind == "causal1d":
            return self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2)  # causal: the padded tail is cut
        as_map = self._to_layout(x, spatial).transpose(1, 2).reshape(x.shape[0], -1, *spatial)
        return self._to_traversal(self.conv(as_map).flatten(2).transpose(1, 2), spatial)

    def _order(self, spatial: list[int], device: torch.device) -> torch.Tensor | None:
        """Step t visits flat position order[t]; None for the stored layout (no copy)."""
        if self.direction in ("forward", f"axis{len(spatial) - 1}"):
            return None
        return named_order(self.direction, spatial, device)

    def _to_traversal(self, tokens: torch.Tensor, spatial: list[int]) -> torch.Tensor:
        """(B, L, C) in the map's layout -> in traversal order."""
        if self.direction == "backward":
            return tokens.flip(1)
        order = self._order(spatial, tokens.device)
        return tokens if order is None else tokens.index_select(1, order)

    def _to_layout(self, tokens: torch.Tensor, spatial: list[int]) -> torch.Tensor:
        """Inverse of _to_traversal."""
        if self.direction == "backward":
            return tokens.flip(1)
        order = self._order(spatial, tokens.device)
        return tokens if order is None else tokens.index_select(1, torch.argsort(order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *spatial) -> (B, C, *spatial)."""
        batch, channels, *spatial = x.shape
        tokens = self._to_traversal(x.flatten(2).transpose(1, 2), spatial)  # (B, L, C) in traversal order
        xs, z = self.up_proj(self.norm(tokens)).chunk(2, dim=-1)  # (B, L, E) each
        conv = F.silu(self._short_conv(xs, spatial))
        q, k, v = self.q_proj(conv), self.k_proj(conv), self.v_proj(xs)  # (B, H, L, E/H)
        gate_input = torch.cat([t.transpose(1, 2).reshape(batch, tokens.shape[1], -1) for t in (q, k, v)], dim=-1)
        i, f = (soft_cap(gate(gate_input)).transpose(1, 2) for gate in (self.input_gate, self.forget_gate))  # (B, H, L)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = mlstm(q.float(), k.float(), v.float(), i.float(), f.float(), backend=self.backend)  # (B, H, L, E/H)
        h = h.transpose(1, 2).reshape(batch, tokens.shape[1], -1)  # (B, L, E)
        h = self.out_norm(h.transpose(1, 2)).transpose(1, 2).to(conv.dtype)
        out = self.down_proj((h + self.skip * conv) * F.silu(z))
        return x + self._to_layout(out, spatial).transpose(1, 2).reshape(batch, channels, *spatial)
