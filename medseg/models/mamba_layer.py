"""Mamba (S6) layer over the positions of a 2D/3D feature map, on medseg_kernels' selective scan.

The map's positions are flattened into a sequence (the scan order of U-Mamba: the last spatial axis
fastest) and run through one Mamba block: LayerNorm -> in_proj to 2E channels (x and gate z) ->
depthwise causal conv over the sequence -> SiLU -> per-position delta, B and C from x -> selective
scan with skip D and gate SiLU(z) -> out_proj, added back to the input (a residual, so that a fresh
layer starts near identity). The scan dispatches to the best kernel for the tensors: numba or PyTorch
on CPU, mamba_ssm's CUDA kernel or our Triton kernel on GPU.
Initialisation follows the Mamba paper: A = -(1..N) per channel (S4D-real), delta bias such that
softplus(bias) is log-uniform in [1e-3, 1e-1], D = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medseg_kernels.selective_scan import selective_scan

DT_MIN, DT_MAX = 1e-3, 1e-1


class MambaLayer(nn.Module):
    def __init__(self, channels: int, state: int = 16, conv_width: int = 4, expand: int = 2, backend: str = "auto"):
        super().__init__()
        inner = expand * channels
        self.rank = math.ceil(channels / 16)
        self.state, self.backend = state, backend
        self.norm = nn.LayerNorm(channels)
        self.in_proj = nn.Linear(channels, 2 * inner, bias=False)
        self.conv = nn.Conv1d(inner, inner, conv_width, groups=inner, padding=conv_width - 1)
        self.x_proj = nn.Linear(inner, self.rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.rank, inner, bias=True)
        self.out_proj = nn.Linear(inner, channels, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -self.rank**-0.5, self.rank**-0.5)
            steps = torch.exp(torch.rand(inner) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)).clamp_min(1e-4)
            self.dt_proj.bias.copy_(steps + torch.log(-torch.expm1(-steps)))  # softplus^-1(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, *spatial) -> (B, C, *spatial)."""
        batch, channels, *spatial = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, C)
        length = tokens.shape[1]
        xs, z = self.in_proj(self.norm(tokens)).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        xs = F.silu(self.conv(xs)[..., :length])  # causal: the padded tail is cut
        dt, B, C = self.x_proj(xs.transpose(1, 2)).split([self.rank, self.state, self.state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, E, L); bias and softplus in the scan
        with torch.autocast(device_type=x.device.type, enabled=False):  # the recurrence in float32, also under AMP
            y = selective_scan(
                xs.float(), delta.float(), -torch.exp(self.A_log.float()), B.transpose(1, 2).float(), C.transpose(1, 2).float(),
                self.D.float(), z.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.backend,
            )
        out = self.out_proj(y.transpose(1, 2).to(xs.dtype))  # (B, L, C)
        return x + out.transpose(1, 2).reshape(batch, channels, *spatial)
