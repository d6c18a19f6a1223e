"""Small hand-made decoders with known structure, for tests and benchmarks of the dynamics.

Each returns a LatentShape with prior mean 0 and uniform masses (1 kg in total).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from neurok.dynamics.shape import LatentShape


def cloud(num_vertices: int, seed: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rest vertices (V, 3) uniform in the unit cube [-0.5, 0.5]^3."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(num_vertices, 3, generator=generator, dtype=dtype) - 0.5


def _zeros(rest: torch.Tensor, k: int) -> torch.Tensor:
    return rest.new_zeros(k)


def linear(rest: torch.Tensor, latent_dims: int, seed: int = 0, scale: float = 0.1) -> LatentShape:
    """x = rest + B z: constant metric, no Christoffel term; with V = kappa/2 |z|^2, a harmonic oscillator."""
    generator = torch.Generator().manual_seed(seed)
    B = scale * torch.randn(latent_dims, rest.numel(), generator=generator, dtype=rest.dtype)
    return LatentShape.from_callable(lambda z: rest + (z @ B).view_as(rest), _zeros(rest, latent_dims))


def rotation(angles: torch.Tensor) -> torch.Tensor:
    """R = Rz(c) Ry(b) Rx(a) for angles (a, b, c)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones((), dtype=c.dtype), torch.zeros((), dtype=c.dtype)  # constants: cheaper under vmap
    rx = torch.stack([one, zero, zero, zero, c[0], -s[0], zero, s[0], c[0]]).view(3, 3)
    ry = torch.stack([c[1], zero, s[1], zero, one, zero, -s[1], zero, c[1]]).view(3, 3)
    rz = torch.stack([c[2], -s[2], zero, s[2], c[2], zero, zero, zero, one]).view(3, 3)
    return rz @ ry @ rx


def rotating(rest: torch.Tensor) -> LatentShape:
    """x = R(z_0:3) S(z_3) rest: a body turned by Euler angles and stretched along y (k = 4); its metric
    depends on z, so the Christoffel term is not zero."""

    def decode(z: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), dtype=z.dtype)
        stretch = torch.stack([one, 1 + 0.3 * torch.tanh(z[3]), one])
        return (rest * stretch) @ rotation(z[:3]).T

    return LatentShape.from_callable(decode, _zeros(rest, 4))


def field(
    rest: torch.Tensor, latent_dims: int, hidden: int = 64, seed: int = 0, scale: float = 0.1
) -> LatentShape:
    """x = rest + scale * MLP([z, gamma(rest_v)]) per vertex, gamma a Fourier embedding: a neural
    deformation field, like the CVAE's decoder."""
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.cat([torch.sin(4 * rest), torch.cos(4 * rest)], dim=-1)
    inputs = latent_dims + embedding.shape[1]
    w1 = torch.randn(inputs, hidden, generator=generator, dtype=rest.dtype) / inputs**0.5
    w2 = torch.randn(hidden, 3, generator=generator, dtype=rest.dtype) / hidden**0.5

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (
            rest + scale * torch.tanh(torch.cat([z.expand(rest.shape[0], -1), embedding], dim=-1) @ w1) @ w2
        )

    return LatentShape.from_callable(decode, _zeros(rest, latent_dims))


def attention(
    rest: torch.Tensor, latent_dims: int, tokens: int = 4, width: int = 16, seed: int = 0, scale: float = 0.1
) -> LatentShape:
    """x = rest + scale * CrossAttention(queries = embed(rest), keys/values = tokens(z)): the shape of the
    CVAE decoder in miniature, through F.scaled_dot_product_attention."""
    generator = torch.Generator().manual_seed(seed)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=rest.dtype) / shape[0] ** 0.5

    w_tokens, w_query, w_out = weight(latent_dims, tokens * width), weight(3, width), weight(width, 3)

    def decode(z: torch.Tensor) -> torch.Tensor:
        keys = torch.tanh(z @ w_tokens).view(1, tokens, width)
        attended = F.scaled_dot_product_attention((rest @ w_query)[None], keys, keys)[0]
        return rest + scale * attended @ w_out

    return LatentShape.from_callable(decode, _zeros(rest, latent_dims))
