"""Building blocks: Fourier point embedding, attention, GEGLU feed-forward, pre-LN transformer blocks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FourierEmbedding(nn.Module):
    """3DShape2VecSet's point embedding: xyz with sin/cos of (2^i * pi * xyz), then a Linear to the width.

    `extra` per-point features (e.g. a displacement) are concatenated before the Linear.
    """

    def __init__(self, frequencies: int, width: int, extra: int = 0):
        super().__init__()
        self.register_buffer("freqs", 2.0 ** torch.arange(frequencies) * math.pi, persistent=False)
        self.proj = nn.Linear(3 + 6 * frequencies + extra, width)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        angles = (x[..., None] * self.freqs).flatten(-2)
        feats = [x, angles.sin(), angles.cos()] + ([extra] if extra is not None else [])
        return self.proj(torch.cat(feats, dim=-1))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fused: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v. The explicit form works under torch.func.jvp/jacfwd; the CPU's fused
    SDPA kernel has no forward-mode derivative (traps.md 1)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v)
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head attention of x (B, N, W) over a context (B, M, W)."""

    def __init__(self, width: int, heads: int, fused: bool):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x's projected queries, split into heads: (B, heads, N, W / heads)."""
        b, n, w = x.shape
        return self.to_q(x).view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def read(self, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The attention of projected queries q (from `queries`) over a context (B, M, W): (B, N, W)."""
        b, h, n, d = q.shape
        k, v = self.to_kv(context).view(b, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4)
        return self.out(attend(q, k, v, self.fused).transpose(1, 2).reshape(b, n, h * d))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.read(self.queries(x), context)


class GEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit."""

    def __init__(self, width: int, mult: int):
        super().__init__()
        self.up = nn.Linear(width, 2 * mult * width)
        self.down = nn.Linear(mult * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.up(x).chunk(2, dim=-1)
        return self.down(a * F.gelu(gate))


class Block(nn.Module):
    """Pre-LN transformer block: self-attention, or cross-attention when given a context, then GEGLU
    (none when ff_mult is 0)."""

    def __init__(self, width: int, heads: int, ff_mult: int, cross: bool = False, fused: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width) if cross else None
        self.attn = Attention(width, heads, fused)
        self.norm_ff = nn.LayerNorm(width) if ff_mult else None
        self.ff = GEGLU(width, ff_mult) if ff_mult else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, self.norm_context(context) if self.norm_context is not None else h)
        return x + self.ff(self.norm_ff(x)) if self.ff is not None else x

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """The projected queries of a cross-attention block's input x: they do not depend on the context."""
        return self.attn.queries(self.norm(x))

    def read(self, x: torch.Tensor, q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """forward(x, context) of a cross-attention block without feed-forward, given q = queries(x)."""
        return x + self.attn.read(q, self.norm_context(context))


def mlp_head(width: int, hidden: int, channels: int) -> nn.Sequential:
    """LayerNorm, `hidden` (Linear, GELU) layers of the width, then a Linear to `channels` per point."""
    layers = [m for _ in range(hidden) for m in (nn.Linear(width, width), nn.GELU())]
    return nn.Sequential(nn.LayerNorm(width), *layers, nn.Linear(width, channels))
