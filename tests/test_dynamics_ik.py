"""Inverse kinematics, tracking, boundary-condition solves and the Chamfer metric."""

from __future__ import annotations

import pytest
import torch

from neurok.dynamics import (
    BoundaryConditions,
    BoundaryConfig,
    IKConfig,
    ReducedShape,
    fit,
    region_near,
    solve_initial_state,
    toys,
    track,
)
from neurok.dynamics.shape import jacobian
from neurok.geometry import chamfer_distance

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_chamfer_against_a_hand_computed_case():
    a = torch.tensor([[0.0, 0, 0], [1, 0, 0]])
    b = torch.tensor([[0.0, 0, 0], [0, 2, 0], [1, 0, 0]])
    # a->b: 0, 0; b->a: 0, 2, 0. L1 = (0 + 2/3) / 2, L2 = (0 + 4/3) / 2
    assert torch.allclose(chamfer_distance(a, b, "l1"), torch.tensor(1 / 3))
    assert torch.allclose(chamfer_distance(a, b, "l2"), torch.tensor(2 / 3))
    assert torch.allclose(chamfer_distance(a, b, "l2", chunk=1), torch.tensor(2 / 3))
    batch = chamfer_distance(torch.stack([a, a + 1]), torch.stack([b, b + 1]))
    assert torch.allclose(batch, torch.tensor([1 / 3, 1 / 3]))
    a.requires_grad_(True)
    chamfer_distance(a, a.detach()).backward()  # zero distances: finite gradients
    assert torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="kind"):
        chamfer_distance(a, b, "l3")


def shape_and_targets(q_true: torch.Tensor):
    rest = toys.cloud(80, dtype=f64)
    shape = ReducedShape.identity(toys.field(rest, latent_dims=3, hidden=16, scale=0.2))
    points = shape.positions(q_true)
    shuffle = torch.randperm(points.shape[1], generator=torch.Generator().manual_seed(0))
    return shape, points[:, shuffle]  # no correspondence


def test_ik_recovers_a_known_latent():
    q_true = torch.tensor([[0.6, -0.4, 0.3], [-0.5, 0.2, 0.4]], dtype=f64)
    shape, points = shape_and_targets(q_true)
    start = chamfer_distance(shape.positions(torch.zeros_like(q_true)), points)
    result = fit(shape, points, IKConfig(space="q", iterations=300, lr=0.03, prior_weight=0.0))
    assert (result.chamfer < 1e-3 * start).all()
    assert torch.allclose(result.q, q_true, atol=1e-2)
    assert result.z.shape == (2, 3) and result.vertices.shape == (2, 80, 3)

    lbfgs = fit(
        shape,
        points,
        IKConfig(space="q", optimizer="lbfgs", iterations=100, lr=1.0, prior_weight=0.0, loss="l2"),
    )
    assert torch.allclose(lbfgs.q, q_true, atol=1e-2)

    in_z = fit(shape, points, IKConfig(space="z", iterations=300, lr=0.03, prior_weight=0.0))
    assert torch.allclose(in_z.z, shape.latents(q_true), atol=1e-2)


def test_ik_with_a_rigid_frame_fits_a_shape_that_travelled_and_turned():
    """In q alone the deformation cannot reach a moved copy; with the frame the fit finds the motion."""
    q_true = torch.tensor([[0.4, -0.3, 0.2]], dtype=f64)
    shape, points = shape_and_targets(q_true)
    turn = torch.linalg.matrix_exp(
        torch.tensor([[0.0, -0.3, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=f64)
    )
    moved = points @ turn.T + torch.tensor([0.4, -0.2, 0.1], dtype=f64)
    cfg = IKConfig(space="q", iterations=400, lr=0.03, prior_weight=0.0)
    alone = fit(shape, moved, cfg)
    framed = fit(shape, moved, IKConfig(space="frame", iterations=400, lr=0.03, prior_weight=0.0))
    assert framed.q.shape == (1, 6 + 3) and framed.z.shape == (1, 3)
    assert framed.chamfer < 0.05 * alone.chamfer
    assert torch.allclose(framed.q[0, 3:6], torch.tensor([0.0, 0.0, 0.3], dtype=f64), atol=2e-2)
    # the whole latent on the frame: here the latent is the reduced space, so the same fit
    in_z = fit(shape, moved, IKConfig(space="frame_z", iterations=400, lr=0.03, prior_weight=0.0))
    assert torch.allclose(in_z.vertices, framed.vertices, atol=1e-6)


def test_tracking_follows_a_sequence():
    t = torch.linspace(0, 1, 4, dtype=f64)[:, None]
    q_true = (
        torch.tensor([0.5, -0.3, 0.2], dtype=f64) * (1 - t) + torch.tensor([0.1, 0.2, -0.3], dtype=f64) * t
    )
    shape, points = shape_and_targets(q_true)  # the 4 frames as a batch, then as one sequence
    result = track(
        shape,
        points[None],
        IKConfig(space="q", iterations=300, lr=0.03, track_iterations=80, prior_weight=0.0, smoothness=1e-3),
    )
    assert result.q.shape == (1, 4, 3) and result.chamfer.shape == (1, 4)
    assert torch.allclose(result.q[0], q_true, atol=2e-2)


def test_boundary_conditions_hit_prescribed_region_velocities_and_positions():
    rest = toys.cloud(80, dtype=f64)
    shape = ReducedShape.identity(toys.field(rest, latent_dims=3, hidden=16, scale=0.2))
    x0 = shape.positions(torch.zeros(1, 3, dtype=f64))[0]
    region = region_near(x0, [0.5, 0.5, 0.5], 0.6)
    assert 5 < region.sum() < 80

    # a poke whose region velocities the decoder can produce: met exactly, from rest
    _, J = jacobian(shape.position_fn(shape.tensors), torch.zeros(3, dtype=f64))
    target = torch.einsum("vik,k->vi", J, torch.tensor([2.0, -1.0, 0.5], dtype=f64))
    poke = BoundaryConditions(torch.zeros(80, dtype=f64), torch.zeros(80, 3, dtype=f64), region, target)
    q0, qdot0 = solve_initial_state(shape, BoundaryConditions.stack([poke]), BoundaryConfig())
    assert torch.equal(q0, torch.zeros(1, 3, dtype=f64))
    assert torch.allclose(torch.einsum("vik,k->vi", J, qdot0[0])[region > 0], target[region > 0], atol=1e-6)

    # a uniform poke it cannot produce exactly: the least-squares optimum (normal equations hold)
    uniform = BoundaryConditions.poke(region, [0.0, 0.0, 1.0])
    _, qdot0 = solve_initial_state(shape, BoundaryConditions.stack([uniform]), BoundaryConfig(ridge=1e-12))
    residual = torch.einsum("vik,k->vi", J, qdot0[0]) - uniform.velocity
    assert torch.einsum("vik,v,vi->k", J, region, residual).abs().max() < 1e-6

    # a drag to where a known latent puts the region, released at rest
    q_true = torch.tensor([[0.4, -0.3, 0.2]], dtype=f64)
    drag = BoundaryConditions.drag(shape.positions(q_true)[0], region, [0.0, 0.0, 0.0])
    q0, qdot0 = solve_initial_state(
        shape, BoundaryConditions.stack([drag]), BoundaryConfig(iterations=300, lr=0.02, prior_weight=0.0)
    )
    reached = shape.positions(q0)[0]
    assert (reached - drag.position)[region > 0].norm(dim=-1).max() < 1e-3
    assert torch.equal(qdot0, torch.zeros_like(qdot0))
