"""Vision Transformer (2D) for image classification, our own code (timm does not import here).

Pre-norm blocks (LayerNorm -> multi-head self-attention through ``scaled_dot_product_attention``
-> residual, LayerNorm -> MLP -> residual) with stochastic depth, a class token and learned
position embeddings. Patch size, width, depth and heads come from the plan. ``layer_id`` numbers
the parameters from the input (0: patch embedding and tokens) to the head (depth + 1), which is
what layer-wise learning-rate decay needs when fine-tuning a pretrained encoder. A checkpoint
trained at another input size loads with its position embeddings resized (``resize_position_embedding``).

``hag_vit`` is the same network with hard-attention gates (HAG, also called feature-selection
gates): a learnable per-channel sigmoid gate on each residual branch (attention and MLP) of every
block, trained by gradient routing (see medseg.tasks.classification)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.registry import ModelFamily, register_model

VIT_DEFAULTS = {"patch": 16, "width": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0, "drop_path": 0.1}


class DropPath(nn.Module):
    """Stochastic depth: drops a sample's whole residual branch with probability ``rate`` while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.rate)
        return x * keep / (1 - self.rate)


class ChannelGate(nn.Module):
    """x * sigmoid(g) with one learnable logit per channel (the last axis, or ``axis``); the logits
    start near 0 (gates near 0.5), drawn like a Xavier-normal (1, C) weight. Parameters of gates are
    named ``gate`` so gradient routing can give them their own optimizer (``is_gate_parameter``)."""

    def __init__(self, channels: int, axis: int = -1):
        super().__init__()
        self.gate = nn.Parameter(torch.randn(channels) * math.sqrt(2.0 / (1 + channels)))
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return x * torch.sigmoid(self.gate).view(shape)


def is_gate_parameter(name: str) -> bool:
    return name.split(".")[-1] == "gate"


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"ViT width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float, gated: bool = False):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1, self.attention = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.drop_path = DropPath(drop_path)
        self.attention_gate = ChannelGate(width) if gated else nn.Identity()
        self.mlp_gate = ChannelGate(width) if gated else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attention_gate(self.attention(self.norm1(x))))
        return x + self.drop_path(self.mlp_gate(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, input_size: list[int], patch: int = 16, width: int = 192, depth: int = 12,
        heads: int = 3, mlp_ratio: float = 4.0, drop_path: float = 0.1, gated: bool = False,
    ):
        super().__init__()
        if len(input_size) != 2 or any(s % patch for s in input_size):
            raise ValueError(f"ViT input size {input_size} must be 2D and a multiple of the patch size {patch}")
        self.patch, self.grid = patch, [s // patch for s in input_size]
        self.patch_embed = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + math.prod(self.grid), width))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # deeper blocks drop more, as in DeiT
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, rate, gated) for rate in rates)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, N, D) patch tokens with position embeddings (no class token)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if tokens.shape[1] != self.pos_embed.shape[1] - 1:
            raise ValueError(f"ViT planned for a {self.grid} patch grid got an image of {list(x.shape[2:])}")
        return tokens + self.pos_embed[:, 1:]

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, N, D) -> (B, 1 + N, D) after the class token and every block."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, num_classes) logits from the class token."""
        return self.head(self.encode(self.tokens(x))[:, 0])

    def layer_id(self, name: str) -> int:
        """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head."""
        if name.startswith(("patch_embed", "cls_token", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.blocks) + 1


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resize_position_embedding(embedding: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """(1, 1 + h*w, D) position embeddings of a square-ish grid -> (1, 1 + grid[0]*grid[1], D), bicubic."""
    cls, patches = embedding[:, :1], embedding[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"cannot resize position embeddings of {patches.shape[1]} patches (not a square grid)")
    if [side, side] == list(grid):
        return embedding
    image = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image, size=list(grid), mode="bicubic", align_corners=False)
    return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, -1, embedding.shape[-1])], dim=1)


def _builder(gated: bool):
    def build(in_channels: int, num_classes: int, deep_supervision: bool = False, input_size: list[int] | None = None, **kwargs) -> VisionTransformer:
        if input_size is None:
            raise ValueError("a ViT needs the planned input_size")
        return VisionTransformer(in_channels, num_classes, list(input_size), **{**VIT_DEFAULTS, **kwargs}, gated=gated)

    return build


for name, gated, summary in (
    ("vit", False, "Vision Transformer (ViT-Tiny by default): class token, learned positions, drop path; input size and patch from the plan"),
    ("hag_vit", True, "ViT with hard-attention gates (a per-channel sigmoid gate on every residual branch), trained with gradient routing"),
):
    register_model(ModelFamily(name=name, build=_builder(gated), task_type="classification", dims=(2,), summary=summary, options=tuple(VIT_DEFAULTS)))
