"""Where the simulated coordinates may go: a wall at the prior's support keeps q where the decoder learned
its shapes, and directions that barely move the mesh are not simulated (the object may be rigid)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from neurok.dynamics import ReducedShape, SimulatorConfig, heavy_directions, rollout, toys
from neurok.dynamics.config import SurrogateConfig
from neurok.dynamics.mechanics import Physics, prior_potential
from neurok.dynamics.rigid import RIGID, FloatingShape
from neurok.dynamics.surrogate import surrogate_shape

f64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_wall_potential_and_gradient():
    physics = Physics(0.5, 0.0, torch.zeros(3, dtype=f64), 1e-6, support=2.0, support_stiffness=40.0)
    inside, outside = torch.tensor([1.0, -1.0], dtype=f64), torch.tensor([3.0, 4.0], dtype=f64)
    prior, wall, gradient, wall_gradient = prior_potential(physics, inside)
    energy, gradient = prior + wall, gradient + wall_gradient
    assert energy.item() == pytest.approx(0.5 * 0.5 * 2.0)  # the prior alone within the support
    torch.testing.assert_close(gradient, 0.5 * inside)
    prior, wall, gradient, wall_gradient = prior_potential(physics, outside)  # |q| = 5: 3 past the wall
    energy, gradient = prior + wall, gradient + wall_gradient
    assert energy.item() == pytest.approx(0.5 * 0.5 * 25 + 0.5 * 40.0 * 9)
    q = outside.clone().requires_grad_()
    (autograd,) = torch.autograd.grad(sum(prior_potential(physics, q)[:2]), q)
    torch.testing.assert_close(gradient, autograd)


def test_wall_turns_back_a_coordinate_of_almost_no_stiffness_and_conserves_energy():
    shape = ReducedShape.identity(toys.linear(toys.cloud(60, dtype=f64), 2))
    q0, v0 = torch.zeros(1, 2, dtype=f64), torch.tensor([[4.0, 0.0]], dtype=f64)
    cfg = SimulatorConfig(frames=30, stiffness=1e-6)  # 1 s: unheld, q reaches 4, twice the wall's 2 sqrt(2)
    free = rollout(shape, q0, v0, dataclasses.replace(cfg, support=None))
    held = rollout(shape, q0, v0, cfg)
    radius = 2.0 * math.sqrt(2)
    assert free.q[0, -1].norm() > 3.9
    assert 0.95 * radius < held.q[0].norm(dim=-1).max() < 1.1 * radius  # frames at 30 fps miss the peak
    assert held.qdot[0, -1, 0] < 0  # it came back
    # entered within a step at omega dt up to 1, the wall still keeps the energy (integrators.mean_gradient)
    assert held.energy_drift().item() < 1e-3


def test_directions_that_barely_move_the_mesh_are_not_simulated():
    rest = toys.cloud(80, dtype=f64)
    moving = ReducedShape.identity(toys.linear(rest, 3, scale=0.05))
    assert heavy_directions(moving, 0.0, 1e-4).dims == 3
    still = ReducedShape.identity(toys.linear(rest, 3, scale=1e-8))  # ~1e-7 of the size per deviation
    assert heavy_directions(still, 0.0, 0.0).dims == 3
    rigid = heavy_directions(still, 0.0, 1e-4)
    assert rigid.dims == 0
    # with no deformation left, the object is its rest mesh carried by the rigid frame: it falls at g
    fast, fit = surrogate_shape(rigid, SurrogateConfig())
    assert fit.modes == 0 and fit.position_error == 0.0
    body = FloatingShape(fast)
    s0 = body.start(1)
    out = rollout(body, s0, torch.zeros_like(s0), SimulatorConfig(frames=10, gravity=[0.0, -9.81, 0.0]))
    assert out.q.shape[-1] == RIGID
    drop = (out.vertices[0] - out.vertices[0, :1]).mean(1)[:, 1]
    torch.testing.assert_close(drop, -0.5 * 9.81 * out.time**2, rtol=0, atol=1e-9)
    assert (out.vertices[0] - out.vertices[0, :1]).std(1).max() < 1e-12  # every vertex moves alike
