"""The fast simulation path (issue 16): the per-object surrogate of the decoder and the cubature of the
steps, each against the reference path it replaces."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neurok.dynamics import (
    Forcing,
    PointForce,
    ReducedShape,
    SimulatorConfig,
    heavy_directions,
    rollout,
    toys,
)
from neurok.dynamics.config import CubatureConfig, SurrogateConfig
from neurok.dynamics.cubature import fit_cubature, frame_rows
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.surrogate import on_vertices, prepare, surrogate_shape
from neurok.errors import NeurokError

torch.set_num_threads(1)

FAST = SurrogateConfig(spread=1.0)  # the toys are far less smooth than a trained decoder


def reduced(latent, k: int) -> ReducedShape:
    basis = torch.linalg.qr(torch.randn(latent.latent_dims, k, generator=torch.Generator().manual_seed(1)))[0]
    return ReducedShape(latent, basis.T.contiguous())


def test_surrogate_of_a_linear_decoder_is_exact_and_rolls_out_as_the_decoder():
    shape = reduced(toys.linear(toys.cloud(300), latent_dims=6), 3)
    fast, fit = surrogate_shape(shape, FAST)
    assert fit.modes == 3  # a linear decoder's displacements span exactly k_q modes
    assert fit.position_error < 1e-5 and fit.jacobian_error < 1e-4
    q = torch.tensor([[0.3, -0.7, 1.1]])
    assert torch.allclose(fast.positions(q), shape.positions(q), atol=1e-5)
    assert torch.equal(fast.positions(torch.zeros(1, 3)), shape.positions(torch.zeros(1, 3)))  # rest exact
    cfg = SimulatorConfig(frames=20, stiffness=5.0)
    q0, v0 = torch.zeros(1, 3), torch.tensor([[0.5, -0.2, 0.1]])
    reference, surrogate = rollout(shape, q0, v0, cfg), rollout(fast, q0, v0, cfg)
    assert (surrogate.vertices - reference.vertices).abs().max() < 1e-4
    assert (surrogate.kinetic - reference.kinetic).abs().max() < 1e-4 * reference.kinetic.max()


def test_surrogate_of_a_nonlinear_decoder_is_checked_on_held_out_samples():
    shape = reduced(toys.attention(toys.cloud(400), latent_dims=8), 3)
    fast, fit = surrogate_shape(shape, FAST)
    assert 0 < fit.position_error < 0.01  # measured 4e-4
    # its own check, repeated: new points, the RMS vertex error against the decoder, as a share of the size
    q = 0.8 * torch.randn(16, 3, generator=torch.Generator().manual_seed(5))
    size = (shape.latent.rest.amax(0) - shape.latent.rest.amin(0)).norm()
    error = (fast.positions(q) - shape.positions(q)).square().sum(-1).mean(-1).sqrt() / size
    assert error.max() < 0.01


def test_prepare_keeps_the_decoder_and_says_why_past_the_tolerance(caplog):
    shape = reduced(toys.attention(toys.cloud(200), latent_dims=8), 2)
    kept, record = prepare(shape, dataclasses.replace(FAST, tolerance=1e-9))
    assert kept is shape and record["decoder"] == "full"
    assert "exceeds dynamics.surrogate.tolerance = 1e-09" in record["reason"]
    assert "simulating with the decoder itself" in caplog.text
    used, record = prepare(shape, FAST)
    assert used is not shape and record["decoder"] == "surrogate" and record["modes"] >= 2
    off, record = prepare(shape, dataclasses.replace(FAST, enabled=False))
    assert off is shape and record == {"decoder": "full", "reason": "dynamics.surrogate.enabled is off"}


@pytest.fixture(scope="module")
def surrogate_body():
    shape = heavy_directions(reduced(toys.field(toys.cloud(1500), latent_dims=8), 3), 0.05)
    return surrogate_shape(shape, FAST)[0]


def floating_metric(shape: ReducedShape, masses: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    x, J = shape.jacobian_fn(shape.tensors)(q)
    F = frame_rows(x, J)
    return torch.einsum("v,via,vib->ab", masses, F, F)


def test_cubature_reproduces_the_floating_frames_metric_at_new_shapes(surrogate_body):
    cub = fit_cubature(surrogate_body, CubatureConfig(max_points=96))
    assert 0 < len(cub.points) <= 96 and (cub.weights > 0).all()
    assert cub.metric_error < 1e-3
    assert torch.allclose(cub.weights.sum(), surrogate_body.latent.masses.sum(), rtol=1e-3)  # the mass
    points = on_vertices(surrogate_body, cub.points, cub.weights)
    for q in 0.7 * torch.randn(4, surrogate_body.dims, generator=torch.Generator().manual_seed(2)):
        full = floating_metric(surrogate_body, surrogate_body.latent.masses, q)
        approx = floating_metric(points, cub.weights, q)
        assert ((approx - full).norm() / full.norm()) < 1e-3


def test_on_vertices_needs_a_surrogate():
    shape = reduced(toys.linear(toys.cloud(50), latent_dims=4), 2)
    with pytest.raises(NeurokError, match="only a surrogate's shape"):
        on_vertices(shape, torch.arange(10), torch.ones(10))


def test_every_vertex_as_a_cubature_point_is_the_reference_path(surrogate_body):
    """Stepping a 'cubature' of all vertices with their own masses, the forcing restricted to them and
    the frames decoded from the whole object, is the plain rollout."""
    V = surrogate_body.latent.num_vertices
    everything = torch.arange(V)
    full = FloatingShape(surrogate_body)
    stepped = FloatingShape(on_vertices(surrogate_body, everything, surrogate_body.latent.masses))
    region = (surrogate_body.latent.rest[:, 0] > 0.4).to(torch.float32)
    forcing = Forcing.stack([Forcing.build(V, [PointForce(region, [-2.0, 0.0, 0.0], 0.0, 0.1)])])
    assert forcing.acted_on().sum() == region.sum()
    cfg = SimulatorConfig(frames=10, gravity=[0.0, -9.81, 0.0], stiffness=0.5, compiled=False)
    s0, v0 = full.start(1), torch.zeros(1, full.dims)
    reference = rollout(full, s0, v0, cfg, forcing)
    fast = rollout(stepped, s0, v0, cfg, forcing.on_vertices(everything), output=full)
    # the same sums in another order: float32 round-off grows by ~5e-7 a frame (5e-6 after 10 frames on
    # 2026-12-06; velocities of up to 3.3 differ by 4e-5). atol 1e-6 failed on a fresh .venv, old code too
    assert torch.allclose(fast.vertices, reference.vertices, atol=2e-5)
    assert torch.allclose(fast.velocities, reference.velocities, atol=2e-4)


def test_a_cubature_rollout_follows_the_all_vertex_rollout(surrogate_body):
    """A poke and gravity: the cubature's frames stay within 1% of the object's size of the reference."""
    cub = fit_cubature(surrogate_body, CubatureConfig(max_points=96))
    V = surrogate_body.latent.num_vertices
    region = (surrogate_body.latent.rest[:, 0] > 0.4).to(torch.float32)
    forcing = Forcing.stack([Forcing.build(V, [PointForce(region, [-2.0, 0.0, 0.0], 0.0, 0.1)])])
    points, masses = cub.stepped(forcing.acted_on())
    full = FloatingShape(surrogate_body)
    stepped = FloatingShape(on_vertices(surrogate_body, points, masses))
    cfg = SimulatorConfig(frames=20, gravity=[0.0, -9.81, 0.0], stiffness=0.5, compiled=False)
    s0, v0 = full.start(1), torch.zeros(1, full.dims)
    reference = rollout(full, s0, v0, cfg, forcing)
    fast = rollout(stepped, s0, v0, cfg, forcing.on_vertices(points), output=full)
    size = (surrogate_body.latent.rest.amax(0) - surrogate_body.latent.rest.amin(0)).norm()
    error = (fast.vertices - reference.vertices).square().sum(-1).mean(-1).sqrt() / size
    assert error.max() < 0.01
    drop = reference.vertices[0, -1, :, 1].mean() - reference.vertices[0, 0, :, 1].mean()
    assert drop < -0.2  # it fell: the comparison is over a motion, not a rest state
    assert fast.energy_drift().max() < 0.02


def test_acted_on_with_no_force_is_the_pinned_vertices():
    pin = torch.zeros(30)
    pin[[3, 7]] = 1
    forcing = Forcing.stack([Forcing.build(30, pin=pin, pin_position=torch.zeros(30, 3))] * 2)
    assert forcing.weights.shape == (2, 0, 30)
    assert forcing.acted_on().nonzero().flatten().tolist() == [3, 7]
