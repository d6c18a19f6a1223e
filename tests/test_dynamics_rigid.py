"""Rigid motion as coordinates (dynamics.rigid) and the physics checks (dynamics.checks): an object that
starts where it is, falls at g, keeps its momentum, hangs from its pins and lands; and every check fails
on a planted wrong rollout of its kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from torch.func import jacfwd

from neurok.dynamics import (
    BoundaryConditions,
    BoundaryConfig,
    Forcing,
    ReducedShape,
    SimulatorConfig,
    checks,
    rollout,
    solve_initial_state,
    toys,
)
from neurok.dynamics.rigid import RIGID, FloatingShape, left_jacobian, rotation

f64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_torch_thread")


STIFFNESS = 0.5  # the toy's deformation modes at a few rad/s: ~17 steps a frame, so the tests stay short


def floating(num_vertices: int = 40, dims: int = 3) -> FloatingShape:
    return FloatingShape(ReducedShape.identity(toys.field(toys.cloud(num_vertices, dtype=f64), dims)))


def centroid(shape: FloatingShape, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("v,...vi->...i", shape.latent.masses, x) / shape.latent.masses.sum()


@pytest.mark.parametrize("angle", [0.0, 1e-5, 0.7, 3.0])
def test_rotation_and_its_left_jacobian(angle):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=f64)
    theta = angle * axis / axis.norm()
    expected = Rotation.from_rotvec(theta.numpy()).as_matrix()
    np.testing.assert_allclose(rotation(theta).numpy(), expected, atol=1e-12)
    # Rot(theta + d) = Rot(J_l d) Rot(theta) to first order
    d = 1e-6 * torch.tensor([1.0, 2.0, -1.0], dtype=f64)
    moved = rotation(theta + d) @ rotation(theta).T
    np.testing.assert_allclose(moved.numpy(), rotation(left_jacobian(theta) @ d).numpy(), atol=1e-11)


def test_floating_jacobian_matches_jacfwd_and_starts_at_rest():
    shape = floating()
    s = torch.cat([torch.tensor([0.1, -0.2, 0.3, 0.4, 1.2, -0.9], dtype=f64), 0.2 * torch.ones(3, dtype=f64)])
    x, J = shape.jacobian_fn(shape.tensors)(s)
    position = shape.position_fn(shape.tensors)
    torch.testing.assert_close(x, position(s))
    torch.testing.assert_close(J, jacfwd(position)(s), rtol=1e-9, atol=1e-10)
    start = shape.start(2)
    torch.testing.assert_close(shape.positions(start)[1], shape.latent.rest, rtol=0, atol=1e-12)


def test_unsupported_object_falls_at_g_whatever_the_decoder():
    shape = floating()
    cfg = SimulatorConfig(frames=15, gravity=[0.0, -9.81, 0.0], stiffness=STIFFNESS)
    s0 = shape.start(1)
    out = rollout(shape, s0, torch.zeros_like(s0), cfg)
    drop = centroid(shape, out.vertices[0])[:, 1] - centroid(shape, out.vertices[0, 0])[1]
    torch.testing.assert_close(drop, -0.5 * 9.81 * out.time**2, rtol=0, atol=1e-9)
    assert out.q[0, :, RIGID:].abs().max() < 1e-9  # uniform gravity does not deform a free body


def spinning_state(shape: FloatingShape, spin: list[float], velocity: list[float]):
    rest = shape.latent.rest
    omega = torch.tensor(spin, dtype=f64).expand_as(rest)
    field = torch.tensor(velocity, dtype=f64) + torch.linalg.cross(omega, rest - centroid(shape, rest))
    bc = BoundaryConditions.stack([BoundaryConditions.velocity_field(field)])
    return solve_initial_state(shape, bc, BoundaryConfig())


@pytest.mark.parametrize("support", [2.0, 0.05])
def test_momentum_is_conserved_through_a_tumble_past_the_chart(support):
    """A throw spinning at 6 rad/s for 1 s turns 6 rad: the rotation vector is recharted on the way. With
    support 0.05 the spin throws the deformation against the wall (|q| <= 0.05 sqrt(3)), whose force acts
    on the deformation alone: the momentum stays (the wall's energy correction along G dq leaked 2.3e-6)."""
    shape = floating()
    q0, qdot0 = spinning_state(shape, [0.0, 6.0, 1.5], [0.3, 0.1, 0.0])
    out = rollout(shape, q0, qdot0, SimulatorConfig(frames=30, stiffness=STIFFNESS, support=support))
    assert out.q[0, :, 3:RIGID].norm(dim=-1).max() <= torch.pi + 0.2  # stayed in the regular chart
    if support < 1:  # the deformation reached the wall (a penalty: it enters a little)
        assert out.q[0, :, RIGID:].norm(dim=-1).max() > support * 3**0.5
    scene = checks.Scene(shape.latent.rest.numpy(), shape.latent.masses.numpy())
    found = {
        c.name: c
        for c in checks.physics_checks(
            scene,
            out.time.numpy(),
            out.vertices[0].numpy(),
            out.velocities[0].numpy(),
            float(out.energy_drift()),
        )
    }
    assert found["linear momentum drift"].value < 1e-6
    assert found["angular momentum drift"].value < 1e-4
    assert found["energy balance"].value < 0.02
    assert all(c.passed for c in found.values())


@pytest.mark.parametrize("batch", [1, 3])
def test_energy_drift_under_two_percent_over_240_steps_alone_and_batched(batch):
    shape = floating()
    q0 = shape.start(batch)
    q0[:, RIGID:] = torch.linspace(0.2, 0.6, batch, dtype=f64)[:, None]
    qdot0 = torch.zeros_like(q0)
    qdot0[:, 3:RIGID] = torch.tensor([0.0, 2.0, 0.5], dtype=f64)
    cfg = SimulatorConfig(frames=30, stiffness=STIFFNESS, gravity=[0.0, -9.81, 0.0])
    out = rollout(shape, q0, qdot0, cfg)
    assert sum(out.steps) >= 240 and out.kinetic.amax(-1).min() > 0
    assert out.energy_drift().max() < 0.02


def test_pins_hold_and_the_rest_hangs():
    shape = floating()
    rest = shape.latent.rest
    pinned = (rest[:, 1] == rest[:, 1].max()).to(f64)  # hung by its top vertex, like benchmarks/physics.py
    forcing = Forcing.stack([Forcing.build(len(rest), dtype=f64, pin=pinned, pin_position=rest)])
    cfg = SimulatorConfig(frames=30, stiffness=STIFFNESS, gravity=[0.0, -9.81, 0.0])
    s0 = shape.start(1)
    out = rollout(shape, s0, torch.zeros_like(s0), cfg, forcing)
    scene = checks.Scene(
        rest.numpy(), shape.latent.masses.numpy(), np.array([0, -9.81, 0]), pinned=pinned.numpy()
    )
    error = checks.pin_error(scene, out.vertices[0].numpy())
    assert error.passed, error.line()
    assert (out.vertices[0, -1] - rest).norm(dim=-1).max() > 1e-3  # not frozen: the free part moved


def test_dropped_object_lands_and_comes_to_rest():
    shape = floating()
    rest = shape.latent.rest
    ground = float(rest[:, 1].min()) - 0.2
    cfg = SimulatorConfig(
        frames=45, stiffness=STIFFNESS, gravity=[0.0, -9.81, 0.0], ground=ground, damping=2.0
    )
    s0 = shape.start(1)
    out = rollout(shape, s0, torch.zeros_like(s0), cfg)
    lowest = out.vertices[0, :, :, 1].amin(-1)
    # penalty contact: a landing at 2 m/s sinks by 6% of the size, and the object rests 1% into the plane
    assert lowest.min() > ground - 0.1
    assert abs(lowest[-1] - ground) < 0.02
    scene = checks.Scene(rest.numpy(), shape.latent.masses.numpy(), np.array([0, -9.81, 0]), ground=True)
    assert checks.settled(scene, out.velocities[0].numpy()).passed
    # the contact, entered within a step at omega dt up to 1, keeps the energy balance (E - E0 = W)
    assert out.energy_drift().item() < 0.02


# ---- each check fails on a planted wrong rollout of its kind ------------------------------------------


def _scene(**kwargs) -> checks.Scene:
    rest = toys.cloud(50, dtype=f64).numpy()
    return checks.Scene(rest, np.full(50, 1 / 50), **kwargs)


def _time(frames: int = 31) -> np.ndarray:
    return np.arange(frames) / 30


def test_start_error_catches_an_offset_first_frame():
    scene = _scene()
    x = np.repeat(scene.rest[None], 3, 0)
    assert checks.start_error(scene, x).passed
    assert not checks.start_error(scene, x + 0.05).passed


def test_free_fall_catches_a_spring_hung_object():
    g = np.array([0.0, -9.81, 0.0])
    scene, t = _scene(gravity=g), _time()
    falling = scene.rest + 0.5 * g * t[:, None, None] ** 2
    hung = scene.rest + 0.5 * g * (np.sin(7 * t) / 7)[:, None, None] ** 2 * 49 / 4  # climbs back up
    zero = np.zeros_like(falling)
    assert checks.free_fall(scene, t, falling, zero).passed
    assert not checks.free_fall(scene, t, hung, zero).passed


def test_momentum_drift_catches_a_braking_object():
    scene, t = _scene(), _time()
    velocity = np.broadcast_to([1.0, 0.0, 0.0], scene.rest.shape)
    moving = scene.rest + t[:, None, None] * velocity
    steady = np.repeat(velocity[None], len(t), 0)
    assert all(c.passed for c in checks.momentum_drift(scene, moving, steady))
    braking = steady * np.exp(-t)[:, None, None]
    assert not checks.momentum_drift(scene, moving, braking)[0].passed


def test_poke_checks_catch_a_sideways_or_global_response():
    scene, t = _scene(), _time()
    region = (scene.rest[:, 0] > 0.3).astype(float)
    poke = checks.Poke(region, np.array([0.0, 0.0, 5.0]), 0.0, 0.1)
    bump = np.exp(-t / 0.2)[:, None, None] * t[:, None, None]
    dent = scene.rest + bump * region[:, None] * [0.0, 0.0, 1.0]
    alignment, locality = checks.poke_response(scene, poke, t, dent)
    assert alignment.passed and locality.passed
    sideways = scene.rest + bump * region[:, None] * [0.0, -1.0, 0.0]
    assert not checks.poke_response(scene, poke, t, sideways)[0].passed
    stretch = scene.rest * (1 + bump)  # everything moves: no local response
    assert not checks.poke_response(scene, poke, t, stretch)[1].passed


def test_pin_error_catches_a_sliding_pin():
    scene, t = _scene(pinned=(toys.cloud(50, dtype=f64)[:, 1] > 0.3).numpy().astype(float)), _time()
    held = np.repeat(scene.rest[None], len(t), 0)
    assert checks.pin_error(scene, held).passed
    assert not checks.pin_error(scene, held + 0.01 * t[:, None, None]).passed


def test_settled_catches_an_object_that_keeps_bouncing():
    scene, t = _scene(ground=True), _time(91)
    bouncing = np.abs(np.sin(5 * t))[:, None, None] * np.ones_like(scene.rest)
    resting = np.exp(-3 * t)[:, None, None] * np.ones_like(scene.rest)
    assert checks.settled(scene, resting).passed
    assert not checks.settled(scene, bouncing).passed


def test_energy_balance_check_and_absorbed_share():
    assert checks.energy_balance(0.01).passed and not checks.energy_balance(0.3).passed
    shape = floating(30, 2)
    x, J = shape.jacobian_fn(shape.tensors)(shape.start(1)[0])
    masses = shape.latent.masses.numpy()
    uniform = np.broadcast_to([0.0, 0.0, 1.0], (30, 3))
    # a uniform force field is a pure translation: all of it taken, by the frame, none by the deformation
    assert checks.absorbed_share(J.numpy(), masses, uniform) == pytest.approx(1.0, abs=1e-9)
    assert checks.absorbed_share(J.numpy(), masses, uniform, slice(RIGID, None)) < 1e-9


def test_poke_response_is_measured_against_the_unpoked_twin():
    """Under gravity the poked region mostly falls; the unpoked twin removes what gravity did."""
    scene, t = _scene(gravity=np.array([0.0, -9.81, 0.0])), _time()
    region = (scene.rest[:, 0] > 0.3).astype(float)
    poke = checks.Poke(region, np.array([0.0, 0.0, 5.0]), 0.0, 0.1)
    falling = scene.rest - 0.5 * 9.81 * t[:, None, None] ** 2 * np.array([0.0, 1.0, 0.0])
    poked = falling + 0.05 * t[:, None, None] * region[:, None] * [0.0, 0.0, 1.0]
    assert not checks.poke_response(scene, poke, t, poked)[0].passed
    alignment, locality = checks.poke_response(scene, poke, t, poked, falling)
    assert alignment.value > 0.99 and locality.passed
