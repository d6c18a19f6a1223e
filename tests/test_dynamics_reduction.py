"""Model reduction by the active subspace (neurok.dynamics.reduction)."""

from __future__ import annotations

import pytest
import torch

from neurok.dynamics import LatentShape, ReductionConfig, active_subspace, heavy_directions, toys
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


def low_rank_field(rest: torch.Tensor, rank: int, latent_dims: int = 10, seed: int = 0):
    """A neural deformation field (toys.field) of u = W z, W (rank, latent_dims) with orthonormal rows:
    the latent is used along exactly `rank` directions."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(latent_dims, rank, generator=generator, dtype=f64)).Q.T
    inner = toys.field(rest, latent_dims=rank, hidden=32, seed=seed, scale=0.3)
    return W, LatentShape.from_callable(lambda z: inner.decode(W @ z), torch.zeros(latent_dims, dtype=f64))


def test_dims_are_the_fewest_that_keep_the_shapes():
    W, shape = low_rank_field(toys.cloud(40, dtype=f64), rank=3)
    # the rule alone: this field's third direction has ~1e-2 of the first's inertia at rest
    reduced = active_subspace(shape, ReductionConfig(samples=96, retain=0.99, min_inertia=0.0))
    assert reduced.dims == 3
    assert reduced.retained >= 0.99 and torch.isclose(reduced.retained, torch.tensor(1.0, dtype=f64))
    assert torch.allclose(torch.linalg.svdvals(reduced.basis @ W.T), torch.ones(3, dtype=f64), atol=1e-8)
    fewer = active_subspace(shape, ReductionConfig(samples=96, dims=2))
    assert 0.9 < fewer.retained < 0.99  # so 3 is the smallest k_q that keeps 99%, 2 the smallest for 90%
    assert active_subspace(shape, ReductionConfig(samples=96, retain=0.9, min_inertia=0.0)).dims == 2
    capped = active_subspace(shape, ReductionConfig(samples=96, retain=0.99, min_inertia=0.0, max_dims=2))
    assert capped.dims == 2 and torch.isclose(capped.retained, fewer.retained)


def test_dims_fixed_beyond_the_rank_keep_everything():
    W, shape = low_rank_field(toys.cloud(40, dtype=f64), rank=2)
    reduced = active_subspace(shape, ReductionConfig(samples=64, dims=4))
    assert reduced.dims == 4
    assert torch.allclose(reduced.basis @ reduced.basis.T, torch.eye(4, dtype=f64), atol=1e-12)
    assert torch.isclose(reduced.retained, torch.tensor(1.0, dtype=f64))
    assert reduced.positions(torch.zeros(1, 4, dtype=f64)).shape == (1, 40, 3)


def test_a_direction_that_barely_moves_the_mass_gives_way():
    """z_0 swings a vertex of almost no mass far (the largest change of |D|, so the first active
    direction), z_1 moves every vertex a little: a mode of almost no inertia beside a real one."""
    rest = toys.cloud(30, dtype=f64)
    masses = torch.full((30,), 1 / 29, dtype=f64)
    masses[0] = 1e-9
    swing, push = torch.zeros_like(rest), 0.05 * torch.ones_like(rest)
    swing[0] = 10.0

    def decode(z):
        return rest + torch.tanh(z[0]) * swing + z[1] * push

    shape = LatentShape.from_callable(decode, torch.zeros(3, dtype=f64), masses)
    reduced = active_subspace(shape, ReductionConfig(samples=64, min_inertia=1e-2))
    assert reduced.eigenvalues[0] > 100 * reduced.eigenvalues[1]  # z_0 leads the active directions
    assert reduced.dims == 1
    assert torch.allclose(reduced.basis.abs(), torch.tensor([[0.0, 1.0, 0.0]], dtype=f64), atol=1e-6)
    assert reduced.retained > 0.99
    kept = active_subspace(shape, ReductionConfig(samples=64))
    assert kept.dims == 2  # by default the light direction counts (IK needs its shapes)
    simulated = heavy_directions(kept, 1e-2)  # and the simulator drops it
    assert torch.allclose(simulated.basis.abs(), torch.tensor([[0.0, 1.0, 0.0]], dtype=f64), atol=1e-6)


def test_a_decoder_that_ignores_z_needs_one_direction():
    rest = toys.cloud(20, dtype=f64)
    shape = LatentShape.from_callable(lambda z: rest + 0 * z.sum(), torch.zeros(5, dtype=f64))
    reduced = active_subspace(shape, ReductionConfig(samples=16))
    assert reduced.dims == 1 and reduced.retained == 1


def test_the_config_is_checked():
    shape = toys.linear(toys.cloud(10, dtype=f64), latent_dims=4)
    for bad, key in ((dict(dims=9), "dims"), (dict(retain=0.0), "retain"), (dict(min_dims=5), "min_dims")):
        with pytest.raises(ConfigError, match=key):
            active_subspace(shape, ReductionConfig(samples=8, **bad))
