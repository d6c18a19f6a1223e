"""Time integrators of the latent equations of motion, for a batch of rollouts (see mechanics.System).

Each has a state, `init` from (q, q') at a time t, `step` over dt, and `observe` to read the vertices,
q', the metric and the Jacobian back at a frame.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from neurok.dynamics.mechanics import System, matvec, regularised


class NotConverged(Exception):
    """The implicit step's iteration did not reach its tolerance."""

    def __init__(self, residual: torch.Tensor):
        super().__init__(f"the last correction moved the vertices by {residual.max().item():.3g} (RMS)")
        self.residual = residual  # (B,) RMS vertex displacement


class VariationalState(NamedTuple):
    q: torch.Tensor  # (B, k_q)
    x: torch.Tensor  # (B, V, 3) decoded vertices at q
    J: torch.Tensor  # (B, V, 3, k_q) dx/dq at q
    G: torch.Tensor  # (B, k_q, k_q) metric at q
    p: torch.Tensor  # (B, k_q) momentum, G q'
    grad_V: torch.Tensor  # (B, k_q) dV/dq at q
    Q: torch.Tensor  # (B, k_q) non-conservative generalized force at q
    work: torch.Tensor  # (B,) of the non-conservative forces since t = 0
    bend: torch.Tensor  # (B, k_q) the last step's q_n+1 minus its linear guess: the decoder's curvature


class Variational:
    """Stormer-Verlet in vertex space, a variational integrator: the default.

    The discrete Lagrangian of a step is L_d = dt (1/2 sum_v m_v |x_v(q_n+1) - x_v(q_n)|^2 / dt^2
    - (V(q_n) + V(q_n+1)) / 2); its discrete Euler-Lagrange equations are

        J_n^T M (x_n+1 - 2 x_n + x_n-1) = dt^2 (Q_n - dV/dq_n),

    which is G q'' + C = Q - dV/dq to second order: the second difference of the decoded vertices
    carries the Christoffel term C, so no second derivative of the decoder is ever taken.

    Why this one: a variational integrator is symplectic for every Lagrangian, including this one with a
    configuration-dependent metric, so its energy error stays bounded (about (omega dt)^2 / 8 of the
    energy in play) instead of drifting; and it is the cheapest per step: one Jacobian (k_q directional
    derivatives) at the new state, plus usually one plain decode, to solve J_n^T M x(q_n+1) = b for
    q_n+1 by a quasi-Newton iteration from G_n (contraction about dt |G^-1 dG/dt|). The implicit
    midpoint rule needs a Jacobian and a reverse pass per iteration, RK4 a Jacobian and a nested JVP per
    stage.
    It is explicit in stability: omega dt < 2 for the fastest mode, past which the guards stop it.
    Non-conservative forces act half at each end of a step (discrete Lagrange-d'Alembert); the
    velocity-dependent ones (drag, damping) see the velocity of the momentum arriving at the state.
    """

    State = VariationalState

    def __init__(self, max_iterations: int, tol: float):
        self.max_iterations, self.tol = max_iterations, tol

    def init(self, system: System, q: torch.Tensor, v: torch.Tensor, t: float = 0.0) -> VariationalState:
        x, J = system.jacobian(q)
        tm = system.terms_from_jacobian(x, J, q, v, t)
        zero = q.new_zeros(q.shape[0])
        return VariationalState(q, x, J, tm.G, matvec(tm.G, v), tm.grad_V, tm.Q, zero, torch.zeros_like(q))

    def solve(
        self, system: System, state: VariationalState, target: torch.Tensor, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q with J_n^T M (x(q) - x_n) = target, and x, J there, by a quasi-Newton iteration from the guess
        q: its slope J_n^T M J(q) starts at G_n and improves by Broyden's secant updates (superlinear for
        small k_q). A point likely to be the answer (the guess, the first iterate, or one reached by a
        small step) is evaluated with its Jacobian, which the next step needs anyway, and accepted when
        the correction it asks for is within tolerance: a typical step costs one Jacobian (the guess,
        second order in dt, is usually within tolerance)."""
        slope = regularised(state.G, system.physics.eps)
        x, J = system.jacobian(q)
        residual = system.pullback(state.J, x - state.x) - target
        for i in range(self.max_iterations):
            step, singular = torch.linalg.solve_ex(slope, -residual)
            if singular.any():  # the secant slope lost rank: the iteration is lost
                raise NotConverged(torch.where(singular > 0, torch.inf, 0.0))
            # in vertex space: a direction the decoder barely moves may keep float noise, harmlessly
            change = (step * matvec(state.G, step)).sum(-1).div(system.total_mass).sqrt()
            small = not change.max() > self.tol  # a NaN counts as small: the simulator catches the state
            if small and J is not None:  # to first order in the small step: x to second order, J to first
                return q + step, x + (J @ step[:, None, :, None]).squeeze(-1), J
            q = q + step
            x, J = system.jacobian(q) if i == 0 or small else (system.position(q), None)
            new = system.pullback(state.J, x - state.x) - target
            secant = (new - residual - matvec(slope, step)) / step.square().sum(-1, keepdim=True).clamp_min(
                torch.finfo(step.dtype).tiny
            )
            slope, residual = slope + secant[:, :, None] * step[:, None, :], new
        raise NotConverged(change)

    def step(self, system: System, state: VariationalState, t: float, dt: float) -> VariationalState:
        b = state.p + 0.5 * dt * (state.Q - state.grad_V)  # = J_n^T M (x_n+1 - x_n) / dt
        linear = state.q + dt * system.solve(state.G, b)  # exact when x is linear in q
        q, x, J = self.solve(system, state, dt * b, linear + state.bend)  # the curvature changes little
        arriving = system.pullback(J, x - state.x) / dt
        G = system.metric(J)
        tm = system.terms_from_jacobian(x, J, q, system.solve(G, arriving), t + dt)
        work = state.work + 0.5 * ((state.Q + tm.Q) * (q - state.q)).sum(-1)
        p = arriving + 0.5 * dt * (tm.Q - tm.grad_V)
        return VariationalState(q, x, J, G, p, tm.grad_V, tm.Q, work, q - linear)

    def observe(
        self, system: System, state: VariationalState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vertices, q', G and J at the state."""
        return state.x, system.solve(state.G, state.p), state.G, state.J


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

    def init(self, system: System, q: torch.Tensor, v: torch.Tensor, t: float = 0.0) -> RK4State:
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

    def observe(
        self, system: System, state: RK4State
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, J = system.jacobian(state.q)
        return x, state.v, system.metric(J), J
