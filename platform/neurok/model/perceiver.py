"""Perceiver-style encoder: learnable tokens read a point cloud by cross-attention, then self-attend."""

from __future__ import annotations

import torch
from torch import nn

from neurok.model.config import ModelConfig
from neurok.model.layers import Block, FourierEmbedding


class PerceiverEncoder(nn.Module):
    """points (B, P, 3) [+ per-point features (B, P, extra)] -> tokens (B, M, width)."""

    def __init__(self, cfg: ModelConfig, extra: int = 0):
        super().__init__()
        self.embed = FourierEmbedding(cfg.frequencies, cfg.width, extra)
        self.tokens = nn.Parameter(torch.randn(cfg.tokens, cfg.width) * 0.02)
        self.read = Block(cfg.width, cfg.heads, cfg.ff_mult, cross=True, fused=cfg.fused_attention)
        self.layers = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.ff_mult, fused=cfg.fused_attention)
            for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, points: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.read(self.tokens.expand(points.shape[0], -1, -1), self.embed(points, features))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)
