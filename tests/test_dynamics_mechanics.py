"""The latent Lagrangian simulator against cases with known answers (neurok.dynamics)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import scipy.linalg
import torch

from neurok.config import load_config
from neurok.dynamics import (
    DynamicsConfig,
    Forcing,
    LatentShape,
    PointForce,
    ReducedShape,
    ReductionConfig,
    SimulatorConfig,
    active_subspace,
    rollout,
    toys,
)
from neurok.dynamics.forces import vertex_forces
from neurok.dynamics.integrators import mean_gradient
from neurok.dynamics.mechanics import Physics, coriolis, metric, terms_from_jacobian
from neurok.dynamics.shape import jacobian
from neurok.errors import BadInputError, ConfigError, NeurokError

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def oscillator(shape: ReducedShape, stiffness: float, q0: torch.Tensor, v0: torch.Tensor, t: torch.Tensor):
    """q(t) of G q'' = -kappa q: modes kappa phi = omega^2 G phi, with Phi^T G Phi = I."""
    x, J = jacobian(shape.position_fn(shape.tensors), q0)
    G = metric(J, shape.latent.masses).numpy()
    omega2, phi = scipy.linalg.eigh(stiffness * torch.eye(len(q0), dtype=f64).numpy(), G)
    phi, omega = torch.from_numpy(phi), torch.from_numpy(omega2).sqrt()
    G = torch.from_numpy(G)
    a, b = phi.T @ G @ q0, phi.T @ G @ v0
    modes = a * torch.cos(omega * t[:, None]) + b / omega * torch.sin(omega * t[:, None])
    return modes @ phi.T, omega


# variational: phase error omega^3 dt^2 t / 24, 2e-3 for the fast mode; rk4: limited by the eps regulariser
@pytest.mark.parametrize("integrator,tol", [("variational", 5e-3), ("rk4", 2e-5)])
def test_linear_decoder_is_the_analytic_harmonic_oscillator(integrator, tol):
    shape = ReducedShape.identity(toys.linear(toys.cloud(20, dtype=f64), latent_dims=2))
    q0, v0 = torch.tensor([0.3, -0.2], dtype=f64), torch.tensor([0.0, 0.5], dtype=f64)
    cfg = SimulatorConfig(dt=1 / 120, fps=30, frames=30, integrator=integrator, stiffness=2.0)
    out = rollout(shape, q0[None], v0[None], cfg)
    expected, omega = oscillator(shape, cfg.stiffness, q0, v0, out.time)
    assert out.time[-1] * omega.min() > 2 * torch.pi  # at least one full period of the slow mode
    assert (out.q[0] - expected).abs().max() < tol * expected.abs().max()


def test_energy_is_conserved_over_240_undamped_steps():
    """A rotating, stretching body under gravity: a configuration-dependent metric and a Christoffel term."""
    shape = ReducedShape.identity(toys.rotating(toys.cloud(30, dtype=f64)))
    cfg = SimulatorConfig(dt=1 / 240, fps=30, frames=30, gravity=[0.0, -9.81, 0.0])
    q0 = torch.tensor([[0.3, 0.2, 0.1, 0.3]], dtype=f64)
    out = rollout(shape, q0, torch.tensor([[1.0, 0.0, 0.0, 2.0]], dtype=f64), cfg)
    assert out.q.shape == (1, 31, 4) and out.vertices.shape == (1, 31, 30, 3)
    assert out.kinetic.max() > 0.1 * out.total.abs().max()  # it really moves
    drift = out.energy_drift().item()
    print(f"relative energy drift over 240 undamped steps (variational): {drift:.2e}")
    assert drift < 1e-3
    assert out.work.abs().max() == 0


def test_energy_balance_holds_with_damping_and_forces():
    """E_t - E_0 equals the work W_t of external forces and damping."""
    rest = toys.cloud(30, dtype=f64)
    shape = ReducedShape.identity(toys.rotating(rest))
    region = (rest[:, 0] > 0.2).to(f64)
    # a force without a window edge: a step inside an RK4 step would cost the balance O(dt)
    forcing = Forcing.build(30, [PointForce(region, [0.0, 2.0, 0.5])], [1.0, 0.0, 0.0], 0.5, f64)
    cfg = SimulatorConfig(dt=1 / 240, fps=30, frames=12, damping=0.5, integrator="rk4")
    out = rollout(
        shape, torch.zeros(1, 4, dtype=f64), torch.zeros(1, 4, dtype=f64), cfg, Forcing.stack([forcing])
    )
    assert out.work.abs().max() > 1e-3
    assert out.energy_drift().item() < 1e-4


def test_generalized_force_is_JT_f_by_finite_differences_of_the_work():
    rest = toys.cloud(25, dtype=f64)
    shape = ReducedShape.identity(toys.rotating(rest))
    position, masses = shape.position_fn(shape.tensors), shape.latent.masses
    region = (rest[:, 1] > 0.1).to(f64)
    poke = PointForce(region, [1.0, -2.0, 0.5], start=0.0, end=1.0)
    forcing = Forcing.build(25, [poke], wind=[0.0, 0.0, 3.0], drag=0.7, dtype=f64)
    physics = Physics(stiffness=0.0, damping=0.0, gravity=torch.zeros(3, dtype=f64), eps=1e-6)
    q, v = torch.tensor([0.2, -0.1, 0.3, 0.1], dtype=f64), torch.tensor([0.5, 0.1, -0.2, 0.3], dtype=f64)
    tm = terms_from_jacobian(*jacobian(position, q), masses, physics, forcing, q, t=0.5)
    Q = tm.Q - tm.D @ v  # the generalized force at velocity v

    xdot = torch.einsum("vik,k->vi", jacobian(position, q)[1], v)
    f = vertex_forces(forcing, masses, 0.5) - 0.7 * masses[:, None] * xdot  # frozen at the state
    point_only = vertex_forces(Forcing.build(25, [poke], dtype=f64), masses, 0.5)
    assert torch.allclose(
        point_only.sum(0), torch.tensor(poke.force, dtype=f64)
    )  # the region feels F in total
    wind = 0.7 * masses[:, None] * torch.tensor([0.0, 0.0, 3.0], dtype=f64)  # its push
    assert vertex_forces(forcing, masses, 1.0).sub(wind).abs().max() < 1e-15  # window closed

    with pytest.raises(BadInputError, match="empty region"):
        Forcing.build(25, [PointForce(torch.zeros(25, dtype=f64), [1.0, 0.0, 0.0])])

    def work(q):  # virtual work of the frozen forces
        return (f * position(q)).sum()

    h = 1e-6
    fd = torch.stack([(work(q + h * e) - work(q - h * e)) / (2 * h) for e in torch.eye(4, dtype=f64)])
    assert torch.allclose(Q, fd, rtol=1e-7, atol=1e-9)


def test_christoffel_term_matches_finite_differences():
    """C = G' v - dT/dq for the pull-back metric, on a decoder with rotations."""
    shape = ReducedShape.identity(toys.rotating(toys.cloud(25, dtype=f64)))
    position, masses = shape.position_fn(shape.tensors), shape.latent.masses
    q, v = torch.tensor([0.4, -0.3, 0.2, 0.5], dtype=f64), torch.tensor([1.0, -0.5, 0.7, 0.8], dtype=f64)

    def G(q):
        return metric(jacobian(position, q)[1], masses)

    def T(q):
        return 0.5 * v @ G(q) @ v

    h, eye = 1e-5, torch.eye(4, dtype=f64)
    Gdot_v = (G(q + h * v) - G(q - h * v)) / (2 * h) @ v
    dT_dq = torch.stack([(T(q + h * e) - T(q - h * e)) / (2 * h) for e in eye])
    C = coriolis(position, masses, jacobian(position, q)[1], q, v)
    assert C.abs().max() > 1e-2
    assert torch.allclose(C, Gdot_v - dT_dq, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "integrator,dt,stiffness,iterations,quantity",
    [
        ("variational", 0.5, 1e4, 1, "position solve did not converge"),
        ("rk4", 0.5, 1e4, 20, "the total energy error"),
        ("variational", 1 / 30, 30.0, 20, "the total energy error"),
    ],
)
def test_guards_stop_a_blowup_with_a_clear_error(integrator, dt, stiffness, iterations, quantity):
    shape = ReducedShape.identity(toys.rotating(toys.cloud(20, dtype=f64)))
    cfg = SimulatorConfig(
        dt=dt,
        fps=1 / dt,
        frames=8,
        stiffness=stiffness,
        integrator=integrator,
        max_omega_dt=0.0,
        solver_iterations=iterations,
    )
    with pytest.raises(
        NeurokError, match=r"blew up at step 1 \(t = [\d.]+ s\), batch item\(s\) \[0\]: "
    ) as err:
        rollout(shape, torch.full((1, 4), 0.3, dtype=f64), torch.zeros(1, 4, dtype=f64), cfg)
    assert quantity in str(err.value) and "simulator.dt" in str(err.value)


def test_steps_are_refined_for_the_fastest_mode():
    """A stiff prior at a coarse dt: the frames are split into enough steps for omega dt <= 0.2."""
    shape = ReducedShape.identity(toys.rotating(toys.cloud(20, dtype=f64)))
    q0, v0 = torch.full((1, 4), 0.3, dtype=f64), torch.zeros(1, 4, dtype=f64)
    cfg = SimulatorConfig(dt=1 / 30, fps=30, frames=30, stiffness=30.0)
    G = metric(jacobian(shape.position_fn(shape.tensors), q0[0])[1], shape.latent.masses)
    omega = (cfg.stiffness / torch.linalg.eigvalsh(G).min()).sqrt().item()
    out = rollout(shape, q0, v0, cfg)
    assert out.steps[0] == math.ceil(omega / (cfg.fps * cfg.max_omega_dt)) > 1
    assert out.energy_drift().item() < 0.02  # (omega dt)^2 / 8 = 0.5%, plus the metric's variation
    coarse = dataclasses.replace(cfg, max_omega_dt=0.0)  # the same rollout at dt = 1/30 blows up
    with pytest.raises(NeurokError, match="total energy error"):
        rollout(shape, q0, v0, coarse)
    with pytest.raises(NeurokError, match="blew up"):  # 16x refinement is not enough: the guards stop it
        rollout(shape, q0, v0, dataclasses.replace(cfg, stiffness=1e6))


def test_stiff_springs_are_stable_and_keep_their_energy_past_the_explicit_limit():
    """An undamped pin at omega dt ~ 4 (Stormer-Verlet's limit is 2): the mean gradient keeps its
    energy (Verlet blows up); the step follows the pin at max_omega_dt_pins, the prior at max_omega_dt."""
    rest = toys.cloud(30, dtype=f64)
    shape = ReducedShape.identity(toys.linear(rest, 3))
    pinned = (rest[:, 1] > 0.2).to(f64)
    forcing = Forcing.stack([Forcing.build(30, dtype=f64, pin=pinned, pin_position=rest)])
    q0, v0 = torch.zeros(1, 3, dtype=f64), torch.tensor([[1.0, -0.5, 0.3]], dtype=f64)
    cfg = SimulatorConfig(frames=30, stiffness=1.0, pin_frequency=150.0, pin_damping=0.0, max_omega_dt=0.0)
    out = rollout(shape, q0, v0, cfg, forcing)
    dt = 1 / (cfg.fps * out.steps[0])
    assert 2 * math.pi * cfg.pin_frequency * dt > 3.9
    assert out.potential.max() - out.potential.min() > 0.03 * out.kinetic.max()  # the pins take part
    assert out.energy_drift().item() < 1e-4  # the prior (explicit) and the solver tolerance
    followed = rollout(shape, q0, v0, dataclasses.replace(cfg, max_omega_dt=0.2), forcing)
    G = metric(jacobian(shape.position_fn(shape.tensors), q0[0])[1], shape.latent.masses)
    pin_mass = pinned * shape.latent.masses.sum() / pinned.sum()
    J = jacobian(shape.position_fn(shape.tensors), q0[0])[1].flatten(0, 1)
    K = torch.eye(3, dtype=f64) + (2 * math.pi * cfg.pin_frequency) ** 2 * J.mT @ (
        pin_mass.repeat_interleave(3)[:, None] * J
    )
    omega = torch.linalg.eigvals(torch.linalg.solve(G, K)).real.max().sqrt().item()
    assert followed.steps[0] == math.ceil(omega / (cfg.fps * cfg.max_omega_dt_pins))


def test_mean_gradient_does_the_work_of_a_contact_that_switches_on_within_the_step():
    """S = k/2 min(0, q_1)^2, a plane entered within the step: the mean gradient's work is S1 - S0 exactly
    (the trapezoid's is not), it pushes along q_1 alone, as the plane does (so a wall on the deformation
    leaves a floating frame's momentum alone), and noise in S1 - S0 at a vanishing step adds no more than
    the slopes' change."""

    def contact(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        depth = q[:, 1].clamp_max(0)
        return 0.5 * 400.0 * depth.square(), torch.stack([torch.zeros_like(depth), 400.0 * depth], -1)

    q0, q1 = torch.tensor([[0.1, 0.05]], dtype=f64), torch.tensor([[0.2, -0.1]], dtype=f64)
    (S0, g0), (S1, g1) = contact(q0), contact(q1)
    dq = q1 - q0
    mean = mean_gradient(dq, S0, g0, S1, g1)
    torch.testing.assert_close((mean * dq).sum(-1), S1 - S0, rtol=1e-12, atol=0.0)
    assert mean[0, 0].item() == 0.0
    trapezoid = 0.5 * (g0 + g1)
    assert ((trapezoid * dq).sum(-1) - (S1 - S0)).abs().item() > 0.4 * (S1 - S0).item()  # off by half
    tiny = 1e-9 * dq
    S_tiny, g_tiny = contact(q0 + tiny)
    noisy = mean_gradient(tiny, S0, g0, S_tiny + 1e-6, g_tiny)  # float noise, far above the step's work
    assert (noisy - 0.5 * (g0 + g_tiny)).norm() <= (g_tiny - g0).norm() + 1e-12


@pytest.mark.parametrize("damping", [50.0, 400.0])
def test_strong_damping_is_booked_at_each_kicks_mean_velocity(damping):
    """c dt up to 1.7: each half-step kick's work at the mean of the velocities around it keeps the
    balance to 1e-5 (booked at the step's mean velocity, it was 2-3.5e-5)."""
    shape = ReducedShape.identity(toys.rotating(toys.cloud(25, dtype=f64)))
    q0, v0 = torch.zeros(1, 4, dtype=f64), torch.tensor([[1.0, -0.5, 0.3, 0.2]], dtype=f64)
    out = rollout(shape, q0, v0, SimulatorConfig(frames=20, stiffness=1.0, damping=damping))
    assert out.work[0, -1] < -0.9 * out.kinetic[0, 0]  # the damping took the motion
    assert out.energy_drift().item() < 1.2e-5


def stackable_objects(rests: list[torch.Tensor], latent_dims: int = 3) -> list[LatentShape]:
    """Deformation fields of several rest shapes sharing one decoder: the rest shape is context."""
    generator = torch.Generator().manual_seed(0)
    w1 = torch.randn(latent_dims + 3, 16, generator=generator, dtype=f64)
    w2 = 0.1 * torch.randn(16, 3, generator=generator, dtype=f64)

    def decode_fn(z, context):
        rest = context["rest"]
        return rest + torch.tanh(torch.cat([z.expand(rest.shape[0], -1), rest], -1) @ w1) @ w2

    masses = torch.full((rests[0].shape[0],), 1 / rests[0].shape[0], dtype=f64)
    return [LatentShape(decode_fn, {"rest": r}, r.new_zeros(latent_dims), masses, r) for r in rests]


# The position solve iterates until the slowest item converges, so items agree to its tolerance only;
# the step count is the same for all (the stiffest item sets it: 4 per frame here, as cfg.dt gives).
@pytest.mark.parametrize("integrator,atol", [("rk4", 1e-12), ("variational", 1e-7)])
def test_batched_rollout_equals_per_item_rollouts(integrator, atol):
    one, other = stackable_objects([toys.cloud(40, seed=1, dtype=f64), toys.cloud(40, seed=2, dtype=f64)])
    shape = ReducedShape.identity(one)
    cfg = SimulatorConfig(
        dt=1 / 120,
        fps=30,
        frames=4,
        integrator=integrator,
        gravity=[0, -9.81, 0],
        stiffness=5.0,
        solver_tol=1e-12,
    )
    q0 = torch.tensor([[0.1, 0.0, 0.2], [-0.3, 0.1, 0.0], [0.0, 0.0, 0.0]], dtype=f64)
    v0 = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, -1.0]], dtype=f64)
    region = (one.rest[:, 2] > 0).to(f64)
    forcings = [
        Forcing.build(40, [PointForce(region, [0.0, s, 0.0], 0.0, 0.05)], dtype=f64) for s in (0, 3, 9)
    ]
    batched = rollout(shape, q0, v0, cfg, Forcing.stack(forcings))
    assert batched.steps == [4] * 4
    for i in range(3):
        single = rollout(shape, q0[i : i + 1], v0[i : i + 1], cfg, Forcing.stack(forcings[i : i + 1]))
        assert torch.allclose(batched.vertices[i], single.vertices[0], atol=atol)
        assert torch.allclose(batched.kinetic[i], single.kinetic[0], atol=atol)

    # a stack of two objects, one state each
    stack = ReducedShape(LatentShape.stack([one, other]), torch.eye(3, dtype=f64).expand(2, 3, 3))
    both = rollout(stack, q0[:2], v0[:2], cfg)
    alone = rollout(ReducedShape.identity(other), q0[1:2], v0[1:2], cfg)
    assert torch.allclose(both.vertices[1], alone.vertices[0], atol=atol)
    assert not torch.allclose(both.vertices[0], both.vertices[1])


def test_forward_mode_through_attention():
    """jacfwd and nested JVPs through F.scaled_dot_product_attention (the simulator picks the math kernel)."""
    latent = toys.attention(toys.cloud(30, dtype=f64), latent_dims=6)
    shape = active_subspace(latent, ReductionConfig(samples=64, dims=2))
    position = shape.position_fn(shape.tensors)
    q = torch.tensor([0.3, -0.2], dtype=f64)
    x, J = jacobian(position, q)
    h = 1e-6
    fd = torch.stack(
        [(position(q + h * e) - position(q - h * e)) / (2 * h) for e in torch.eye(2, dtype=f64)], -1
    )
    assert torch.allclose(J, fd, atol=1e-8)
    out = rollout(
        shape, q.expand(2, 2), torch.zeros(2, 2, dtype=f64), SimulatorConfig(dt=1 / 60, fps=30, frames=2)
    )
    assert torch.isfinite(out.vertices).all()


def test_config_is_typed_and_checked():
    cfg = load_config(DynamicsConfig, overrides=["simulator.integrator=rk4", "simulator.gravity=[0,-9.81,0]"])
    assert cfg.simulator.integrator == "rk4" and cfg.simulator.gravity == [0, -9.81, 0]
    assert cfg.simulator.steps_per_frame() == 8
    with pytest.raises(ConfigError, match="integrator"):
        load_config(DynamicsConfig, overrides=["simulator.integrator=euler"])
    with pytest.raises(ConfigError, match="whole number"):
        SimulatorConfig(dt=1 / 100, fps=30).steps_per_frame()
