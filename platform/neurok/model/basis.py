"""A deformation linear in the latent (model.linear_basis, ours): each query reads M0's shape tokens, not
z, into `fields` displacement vectors, a basis of the object's deformations at that query, and a linear map
of the flattened z weights them:

    u_lin(x) = B(x, M0) W z        B: (3, fields) per query, W: (fields, k), no bias

For one object the decoder's range then holds a linear subspace whatever z does to the nonlinear path, as
PCA's does for every object, but shaped by M0; its Jacobian is B W, the same at every z.
"""

from __future__ import annotations

import torch
from torch import nn

from neurok.model.config import ModelConfig
from neurok.model.layers import Block, mlp_head


class LinearBasis(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fields = cfg.linear_basis
        self.read = Block(cfg.width, cfg.heads, 0, cross=True, fused=False)
        self.head = mlp_head(cfg.width, cfg.head_layers, 3 * self.fields)
        self.coefficients = nn.Linear(cfg.tokens * cfg.latent_dim, self.fields, bias=False)
        # Zero weights: the model starts from "no deformation", as the head does; the basis still learns,
        # since the coefficients' gradient through a random basis is not zero. A small basis: at the default
        # init its noise took z's KL to 4.9 nats where the model needed none (tests/test_model.py's overfit).
        nn.init.zeros_(self.coefficients.weight)
        nn.init.normal_(self.head[-1].weight, std=0.01)
        nn.init.zeros_(self.head[-1].bias)

    def basis(self, shape_tokens: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """B at the queries: shape tokens (B, S, width), embedded queries (B, Q, width) -> (B, Q, 3, F)."""
        return self.head(self.read(embedded, shape_tokens)).unflatten(-1, (3, self.fields))

    def forward(self, z: torch.Tensor, shape_tokens: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """u_lin (B, Q, 3) for latents z (B, M, d)."""
        weights = self.coefficients(z.flatten(1))  # (B, fields)
        return (self.basis(shape_tokens, embedded) @ weights[:, None, :, None]).squeeze(-1)
