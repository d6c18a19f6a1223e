"""A PointNet encoder to tokens: E_vae with no attention (model.vae_encoder=pointnet).

In the shape-learning probe (benchmarks/shape_learning.py), NeuROK's Perceiver E_vae passed no change of
shape to any decoder, its own or a plain MLP's, while a PointNet encoder did (README, "NeuROK learns a
change of shape"). Here a per-point MLP of [Fourier(x), displacement] is max- and mean-pooled (max pooling
carries most of it: the probe's autoencoder, mean-pooled, reproduced a quarter of what it did with both)
and split into the M tokens by one Linear, so each token holds its own projection of the whole field.
Our reading, not measured: a Perceiver's first read starts uniform, so every token begins with the same
mean of a near-linear function of the displacement, and with rigid motion undone that mean is small.
"""

from __future__ import annotations

import torch
from torch import nn

from neurok.model.config import ModelConfig
from neurok.model.layers import FourierEmbedding


class PointNet(nn.Module):
    """points (B, P, 3) [+ per-point features] -> a code (B, code): a per-point MLP of [Fourier(x), extra],
    pooled over the points (`pool`: max+mean, max or mean), then a Linear."""

    def __init__(self, frequencies: int, width: int, code: int, extra: int = 0, pool: str = "max+mean"):
        super().__init__()
        self.pools = pool.split("+")
        self.embed = FourierEmbedding(frequencies, width, extra)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.head = nn.Linear(len(self.pools) * width, code)

    def forward(self, points: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mlp(self.embed(points, extra))
        return self.head(torch.cat([h.amax(dim=1) if p == "max" else h.mean(dim=1) for p in self.pools], -1))


class PointNetTokens(nn.Module):
    """points (B, P, 3) + per-point features (B, P, extra) -> tokens (B, M, width): a PointNet code of
    M x width numbers, one row per token."""

    def __init__(self, cfg: ModelConfig, extra: int):
        super().__init__()
        self.tokens, self.width = cfg.tokens, cfg.width
        self.net = PointNet(cfg.frequencies, cfg.width, cfg.tokens * cfg.width, extra)
        self.norm = nn.LayerNorm(cfg.width)  # as the Perceiver's tokens end (at lr 1e-3 it diverged without)

    def forward(self, points: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return self.norm(self.net(points, features).view(-1, self.tokens, self.width))
