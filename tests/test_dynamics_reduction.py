"""Model reduction by the active subspace (neurok.dynamics.reduction)."""

from __future__ import annotations

import pytest
import torch

from neurok.dynamics import LatentShape, ReductionConfig, active_subspace, toys
from neurok.dynamics.reduction import choose_dims
from neurok.errors import ConfigError

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_active_directions(rest: torch.Tensor, seed: int = 0):
    """A decoder of 8 latent dims that depends only on u = W z, W (2, 8) with orthonormal rows."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(8, 2, generator=generator, dtype=f64)).Q.T
    B = 0.1 * torch.randn(3, *rest.shape, generator=generator, dtype=f64)

    def decode_fn(z, context):
        u = W @ z
        return context + torch.tanh(u[0]) * B[0] + torch.sin(u[1]) * B[1] + u[0] * u[1] * B[2]

    mu = torch.randn(8, generator=generator, dtype=f64) * 0.1
    return W, LatentShape(
        decode_fn, rest, mu, torch.full((rest.shape[0],), 1 / rest.shape[0], dtype=f64), rest
    )


def test_active_subspace_recovers_the_active_directions():
    W, shape = two_active_directions(toys.cloud(30, dtype=f64))
    reduced = active_subspace(shape, ReductionConfig(samples=128, seed=3))
    assert reduced.dims == 2
    assert reduced.eigenvalues[1] > 1e6 * reduced.eigenvalues[2].clamp_min(1e-300)
    # A spans the rows of W: the singular values of A W^T are the cosines of the principal angles
    assert torch.allclose(torch.linalg.svdvals(reduced.basis @ W.T), torch.ones(2, dtype=f64), atol=1e-10)
    assert torch.allclose(reduced.basis @ reduced.basis.T, torch.eye(2, dtype=f64), atol=1e-12)
    again = active_subspace(shape, ReductionConfig(samples=128, seed=3))
    assert torch.equal(again.basis, reduced.basis)  # deterministic from the seed
    z = reduced.latents(torch.tensor([[0.5, -0.5]], dtype=f64))
    assert torch.allclose(z[0], shape.mu_cond + torch.tensor([0.5, -0.5], dtype=f64) @ reduced.basis)


def test_a_stack_of_objects_shares_the_largest_chosen_dims():
    rest_a, rest_b = toys.cloud(20, seed=1, dtype=f64), toys.cloud(20, seed=2, dtype=f64)
    W, a = two_active_directions(rest_a)
    b = LatentShape(a.decode_fn, rest_b, a.mu_cond, a.masses, rest_b)
    reduced = active_subspace(LatentShape.stack([a, b]), ReductionConfig(samples=64, max_dims=4))
    assert reduced.basis.shape == (2, 2, 8) and reduced.batch_size == 2
    assert torch.allclose(torch.linalg.svdvals(reduced.basis[1] @ W.T), torch.ones(2, dtype=f64), atol=1e-10)
    assert reduced.positions(torch.zeros(2, 2, dtype=f64)).shape == (2, 20, 3)


def test_dims_from_the_eigenvalue_gap_with_a_cap():
    eigenvalues = torch.tensor([5.0, 4.0, 3.9, 0.01, 0.009, 0.005, 0.004, 0.003], dtype=f64)
    assert choose_dims(eigenvalues, ReductionConfig()) == 3
    assert choose_dims(eigenvalues, ReductionConfig(max_dims=2)) == 1  # the best gap within the cap
    assert choose_dims(eigenvalues, ReductionConfig(min_dims=4)) == 5
    assert choose_dims(eigenvalues, ReductionConfig(dims=6)) == 6
    with pytest.raises(ConfigError, match="dims"):
        choose_dims(eigenvalues, ReductionConfig(dims=9))
