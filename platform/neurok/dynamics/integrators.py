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
    v: torch.Tensor  # (B, k_q) q' = G^-1 p
    grad_V: torch.Tensor  # (B, k_q) dV/dq at q, of the soft terms (prior, gravity)
    S: torch.Tensor  # (B,) the stiff springs' energy at q (pins, ground, wall)
    grad_S: torch.Tensor  # (B, k_q) dS/dq at q
    Q: torch.Tensor  # (B, k_q) external generalized force at q (independent of the velocity)
    D: torch.Tensor  # (B, k_q, k_q) damping at q: the forces linear in the velocity are -D q'
    work: torch.Tensor  # (B,) of the non-conservative forces since t = 0
    bend: torch.Tensor  # (B, k_q) the last step's q_n+1 minus its linear guess: the decoder's curvature


def mean_gradient(
    dq: torch.Tensor, S0: torch.Tensor, grad0: torch.Tensor, S1: torch.Tensor, grad1: torch.Tensor
) -> torch.Tensor:
    """The stiff springs' mean gradient (B, k) over a step dq (B, k) from where they are S0 (B,) with
    gradient grad0 to where they are S1, grad1: the weighted mean (1/2 - a) grad0 + (1/2 + a) grad1 whose
    work is exactly S1 - S0 (a discrete gradient), so a contact that switches on within a step keeps the
    energy balance. Being a mean of the two ends' gradients, it pushes only where the springs push: the
    wall, which acts on the deformation alone, leaves the linear and angular momentum alone (a correction
    along G dq, Gonzalez 1996, gave a spinning box's frame 1.2% of its momentum at the wall). For S convex
    along the step |a| <= 1/2 holds; the clamp to it also keeps float noise in S1 - S0, over a vanishing
    step, from becoming a force."""
    trapezoid = 0.5 * (grad0 + grad1)
    change = ((grad1 - grad0) * dq).sum(-1)
    error = S1 - S0 - (trapezoid * dq).sum(-1)
    weight = torch.where(change != 0, error / torch.where(change != 0, change, 1.0), 0.0).clamp(-0.5, 0.5)
    return trapezoid + weight[:, None] * (grad1 - grad0)


class Variational:
    """Stormer-Verlet in vertex space, a variational integrator: the default.

    The discrete Lagrangian of a step is L_d = dt (1/2 sum_v m_v |x_v(q_n+1) - x_v(q_n)|^2 / dt^2
    - (V(q_n) + V(q_n+1)) / 2); its discrete Euler-Lagrange equations are

        J_n^T M (x_n+1 - 2 x_n + x_n-1) = dt^2 (Q_n - dV/dq_n),

    which is G q'' + C = Q - dV/dq to second order: the second difference of the decoded vertices
    carries the Christoffel term C, so no second derivative of the decoder is ever taken.

    The stiff springs S (pins, ground, wall) act through their mean gradient over the step instead of
    at each end (a discrete gradient, implicit in q_n+1: mean_gradient): stable at any omega dt, and
    their work over a step is their energy's change, even for a contact that switches on within it, so
    the step follows them (simulator.max_omega_dt_contacts, max_omega_dt_pins) instead of resolving
    their period.

    Why this one: a variational integrator is symplectic for every Lagrangian, including this one with a
    configuration-dependent metric, so its energy error stays bounded (about (omega dt)^2 / 8 of the
    energy in play) instead of drifting; and it is the cheapest per step: one Jacobian (k_q directional
    derivatives) at the new state, plus usually one plain decode, to solve J_n^T M x(q_n+1) = b for
    q_n+1 by a quasi-Newton iteration from G_n (contraction about dt |G^-1 dG/dt|). The implicit
    midpoint rule needs a Jacobian and a reverse pass per iteration, RK4 a Jacobian and a nested JVP per
    stage.
    It is explicit in stability for the soft terms: omega dt < 2 for their fastest mode, past which the
    guards stop it.
    Non-conservative forces act half at each end of a step (discrete Lagrange-d'Alembert). The damping
    -D q' (pins, contact, drag, Rayleigh) sees the step's own velocity (q_n+1 - q_n) / dt in both halves,
    which makes the position solve linear in it: the trapezoidal rule, stable at any damping. With the
    damping of the first half at the previous step's velocity instead, a critically damped spring (the
    pins, the ground) blew up at omega dt = 1, which limited the steps to what the stiff springs allowed.
    """

    State = VariationalState

    def __init__(self, max_iterations: int, tol: float):
        self.max_iterations, self.tol = max_iterations, tol

    def init(self, system: System, q: torch.Tensor, v: torch.Tensor, t: float = 0.0) -> VariationalState:
        x, J = system.jacobian(q)
        tm = system.terms_from_jacobian(x, J, q, t)
        zero = q.new_zeros(q.shape[0])
        p = matvec(tm.G, v)
        return VariationalState(
            q, x, J, tm.G, p, v, tm.grad_V, tm.S, tm.grad_S, tm.Q, tm.D, zero, torch.zeros_like(q)
        )

    def solve(
        self,
        system: System,
        state: VariationalState,
        target: torch.Tensor,
        q: torch.Tensor,
        dt: float,
        slope: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q with J_n^T M (x(q) - x_n) + dt/2 D_n (q - q_n) + dt^2/2 (mean_gradient - dS/dq_n) = target, and
        x, J there, by a quasi-Newton iteration from the guess q: its slope starts at `slope`, G_n +
        dt/2 D_n + dt^2/4 K_S (K_S the stiff springs' Gauss-Newton Hessian), and improves by Broyden's
        secant updates (superlinear for small k_q). Each iterate is evaluated with its Jacobian (the
        stiff springs' force needs it, and the next step needs it anyway) and accepted when the
        correction it asks for is within tolerance: a typical step costs one Jacobian."""
        damping = 0.5 * dt * state.D
        slope = regularised(slope, system.physics.eps)

        def residual_at(q: torch.Tensor, x: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
            dq = q - state.q
            mean = mean_gradient(dq, state.S, state.grad_S, *system.stiff_potential(q, x, J))
            springs = 0.5 * dt * dt * (mean - state.grad_S)
            return system.pullback(state.J, x - state.x) + matvec(damping, dq) + springs - target

        x, J = system.jacobian(q)
        residual = residual_at(q, x, J)
        for _ in range(self.max_iterations):
            step, singular = torch.linalg.solve_ex(slope, -residual)
            if singular.any():  # the secant slope lost rank: the iteration is lost
                raise NotConverged(torch.where(singular > 0, torch.inf, 0.0))
            # in vertex space: a direction the decoder barely moves may keep float noise, harmlessly
            change = (step * matvec(state.G, step)).sum(-1).div(system.total_mass).sqrt()
            if not change.max() > self.tol:  # a NaN counts as small: the simulator catches the state
                # to first order in the small step: x to second order, J to first
                return q + step, x + (J @ step[:, None, :, None]).squeeze(-1), J
            q = q + step
            x, J = system.jacobian(q)
            new = residual_at(q, x, J)
            secant = (new - residual - matvec(slope, step)) / step.square().sum(-1, keepdim=True).clamp_min(
                torch.finfo(step.dtype).tiny
            )
            slope, residual = slope + secant[:, :, None] * step[:, None, :], new
        raise NotConverged(change)

    def step(self, system: System, state: VariationalState, t: float, dt: float) -> VariationalState:
        # J_n^T M (x_n+1 - x_n) / dt = b - D_n (q_n+1 - q_n) / 2 - dt/2 (mean_gradient - dS/dq_n)
        b = state.p + 0.5 * dt * (state.Q - state.grad_V - state.grad_S)
        _, contacts, pins = system.stiffness(state.q, state.x, state.J)
        K_S = contacts + pins
        slope = state.G + 0.5 * dt * state.D + 0.25 * dt * dt * K_S
        linear = state.q + dt * system.solve(slope, b)  # exact when x is linear in q (and S quadratic)
        guess = linear + state.bend  # the curvature changes little
        q, x, J = self.solve(system, state, dt * b, guess, dt, slope)
        arriving = system.pullback(J, x - state.x) / dt
        tm = system.terms_from_jacobian(x, J, q, t + dt)
        dq = q - state.q
        u = dq / dt
        start = state.Q - matvec(state.D, u)  # the forces each half of the step applied
        end = tm.Q - matvec(tm.D, system.solve(tm.G, arriving))
        mean = mean_gradient(dq, state.S, state.grad_S, tm.S, tm.grad_S)
        p = arriving + 0.5 * dt * (end - tm.grad_V - mean)
        # each half-step kick does work at the mean of the velocities before and after it: at half the
        # step's velocity change apart, a strong damping's kicks differ in energy by O((c dt)^2)
        v = system.solve(tm.G, p)
        work = state.work + 0.25 * dt * ((start * (state.v + u)).sum(-1) + (end * (u + v)).sum(-1))
        return VariationalState(q, x, J, tm.G, p, v, tm.grad_V, tm.S, tm.grad_S, tm.Q, tm.D, work, q - linear)

    def observe(
        self, system: System, state: VariationalState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vertices, q', G and J at the state."""
        return state.x, state.v, state.G, state.J


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
            tm = system.terms(s.q, t)
            applied = tm.Q - matvec(tm.D, s.v)
            force = applied - system.coriolis(tm.J, s.q, s.v) - tm.grad_V - tm.grad_S
            return RK4State(s.v, system.solve(tm.G, force), (applied * s.v).sum(-1))

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
