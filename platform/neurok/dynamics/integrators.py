"""Time integrators of the latent equations of motion, for a batch of rollouts (see mechanics.System).

Each has a state, `init` from (q, q'), `step` over dt, and `velocity` to read q' back at a frame.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from neurok.dynamics.mechanics import System, matvec


class NotConverged(Exception):
    """The implicit step's iteration did not reach its tolerance."""

    def __init__(self, residual: torch.Tensor):
        super().__init__(f"residual {residual.max().item():.3g}")
        self.residual = residual  # (B,) latent units


class MidpointState(NamedTuple):
    q: torch.Tensor  # (B, k_q)
    p: torch.Tensor  # (B, k_q) momentum G q'
    v: torch.Tensor  # (B, k_q) last midpoint velocity: the first guess of the next step's solve
    work: torch.Tensor  # (B,) of the non-conservative forces since t = 0


class Midpoint:
    """The implicit midpoint rule on the canonical pair (q, p = G(q) q'): the default.

    Why this one: the metric depends on the configuration, so H = 1/2 p^T G(q)^-1 p + V(q) is not
    separable, and the explicit schemes (leapfrog, symplectic Euler) lose their symplecticity on it;
    semi-implicit Euler on (q, q') is also only first order, with an energy error of order omega dt
    (about 4% at omega = 20 rad/s, dt = 1/240 s). The implicit midpoint rule is symplectic for every
    Hamiltonian, symmetric and second order, and conserves quadratic invariants exactly (the energy of
    the linear-decoder oscillator). With q_m = q + dt/2 v_m, p_m = p + dt/2 F(q_m, v_m), it solves
    G(q_m) v_m = p_m by fixed-point iteration, one evaluation of the mechanics (as one RK4 stage) per
    iteration, until v_m changes by less than `tol` latent units over a step. The contraction factor is
    about dt/2 |G^-1 dG/dt|: a fast-changing, ill-conditioned metric needs more iterations or a smaller
    dt, and an iteration that does not converge stops the rollout rather than lose energy silently.
    Non-conservative forces (external, damping) act at the midpoint.
    """

    State = MidpointState

    def __init__(self, max_iterations: int, tol: float):
        self.max_iterations, self.tol = max_iterations, tol

    def init(self, system: System, q: torch.Tensor, v: torch.Tensor) -> MidpointState:
        G = system.metric(system.jacobian(q)[1])
        return MidpointState(q, matvec(G, v), v, q.new_zeros(q.shape[0]))

    def step(self, system: System, state: MidpointState, t: float, dt: float) -> MidpointState:
        v = state.v
        for _ in range(self.max_iterations):
            q_mid = state.q + 0.5 * dt * v
            tm = system.terms(q_mid, v, t + 0.5 * dt)
            p_mid = state.p + 0.5 * dt * (system.kinetic_gradient(q_mid, v) - tm.grad_V + tm.Q)
            v_mid = system.solve(tm.G, p_mid)
            residual = dt * (v_mid - v).abs().amax(-1)
            v = v_mid
            if not residual.max() > self.tol:  # a NaN ends the iteration too; the simulator catches it
                break
        else:
            raise NotConverged(residual)
        work = state.work + dt * (tm.Q * v).sum(-1)
        return MidpointState(state.q + dt * v, 2 * p_mid - state.p, v, work)

    def velocity(self, system: System, state: MidpointState, G: torch.Tensor) -> torch.Tensor:
        return system.solve(G, state.p)


class RK4State(NamedTuple):
    q: torch.Tensor  # (B, k_q)
    v: torch.Tensor  # (B, k_q)
    work: torch.Tensor  # (B,)


class RK4:
    """Classical Runge-Kutta on (q, q', work) with q'' from the Euler-Lagrange equations.

    Fourth order and explicit (4 mechanics evaluations per step), but not symplectic: over long horizons
    its energy drifts slowly instead of oscillating.
    """

    State = RK4State

    def init(self, system: System, q: torch.Tensor, v: torch.Tensor) -> RK4State:
        return RK4State(q, v, q.new_zeros(q.shape[0]))

    def step(self, system: System, state: RK4State, t: float, dt: float) -> RK4State:
        def derivative(s: RK4State, t: float) -> RK4State:
            tm = system.terms(s.q, s.v, t)
            force = tm.Q - system.coriolis(tm.J, s.q, s.v) - tm.grad_V
            return RK4State(s.v, system.solve(tm.G, force), (tm.Q * s.v).sum(-1))

        def advance(s: RK4State, d: RK4State, h: float) -> RK4State:
            return RK4State(*(a + h * b for a, b in zip(s, d, strict=True)))

        k1 = derivative(state, t)
        k2 = derivative(advance(state, k1, dt / 2), t + dt / 2)
        k3 = derivative(advance(state, k2, dt / 2), t + dt / 2)
        k4 = derivative(advance(state, k3, dt), t + dt)
        slope = RK4State(*((a + 2 * b + 2 * c + d) / 6 for a, b, c, d in zip(k1, k2, k3, k4, strict=True)))
        return advance(state, slope, dt)

    def velocity(self, system: System, state: RK4State, G: torch.Tensor) -> torch.Tensor:
        return state.v
