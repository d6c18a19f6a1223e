"""Latent rollouts: integrate the Euler-Lagrange equations of a batch of objects or conditions at once.

A batch is either many initial states and forcings of one object, or a stack of objects (one state
each). The per-object mechanics are vectorised with torch.func.vmap (mechanics.System); nothing loops
over vertices or batch items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from neurok.dynamics.config import Integrator, SimulatorConfig
from neurok.dynamics.forces import Forcing
from neurok.dynamics.integrators import RK4, Midpoint, NotConverged
from neurok.dynamics.mechanics import Physics, System, matvec
from neurok.dynamics.shape import ReducedShape
from neurok.errors import NeurokError


def relative_energy_error(kinetic: torch.Tensor, potential: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """(E_t - E_0 - W_t) / (max_{s<=t} T_s + |W_t|) along the last axis, E = T + V, W the work of the
    non-conservative forces: zero for exact dynamics.

    The scale is the energy in play (the peak kinetic energy of a free oscillation), not E_0 itself,
    which depends on where gravity's zero is.
    """
    error = kinetic + potential - (kinetic[..., :1] + potential[..., :1]) - work
    scale = kinetic.cummax(dim=-1).values + work.abs() + torch.finfo(kinetic.dtype).tiny
    return error / scale


@dataclass
class Rollout:
    """A batch of rollouts sampled at the output frame rate; frame 0 is the initial state."""

    time: torch.Tensor  # (F + 1,) s
    q: torch.Tensor  # (B, F + 1, k_q)
    qdot: torch.Tensor  # (B, F + 1, k_q)
    vertices: torch.Tensor  # (B, F + 1, V, 3)
    kinetic: torch.Tensor  # (B, F + 1) J
    potential: torch.Tensor  # (B, F + 1) J
    work: torch.Tensor  # (B, F + 1) J, done by external forces and damping since t = 0

    @property
    def total(self) -> torch.Tensor:
        return self.kinetic + self.potential

    def energy_drift(self) -> torch.Tensor:
        """(B,) the largest relative energy error over the horizon (see relative_energy_error)."""
        return relative_energy_error(self.kinetic, self.potential, self.work).abs().amax(dim=-1)


class Frame(NamedTuple):
    q: torch.Tensor
    qdot: torch.Tensor
    vertices: torch.Tensor
    kinetic: torch.Tensor
    potential: torch.Tensor
    work: torch.Tensor


def _stop(step: int, t: float, what: str, items: torch.Tensor, cfg: SimulatorConfig) -> NeurokError:
    return NeurokError(
        f"latent rollout blew up at step {step} (t = {t:.4f} s), batch item(s) {items.tolist()}: {what}. "
        f"Reduce simulator.dt (now {cfg.dt:g} s) or the forces, or raise simulator.damping"
    )


def _check_energy(frames: list[Frame], step: int, t: float, cfg: SimulatorConfig) -> None:
    energy = (torch.stack([getattr(f, k) for f in frames], -1) for k in ("kinetic", "potential", "work"))
    ratio = relative_energy_error(*energy)[:, -1].abs()
    over = ~(ratio <= cfg.max_energy_error)  # NaN counts as over
    if over.any():
        what = (
            f"the total energy error |E - E0 - W| is {ratio.max().item():.3g} of the energy in play "
            f"(limit simulator.max_energy_error = {cfg.max_energy_error:g})"
        )
        raise _stop(step, t, what, over.nonzero().flatten(), cfg)


def rollout(
    shape: ReducedShape,
    q0: torch.Tensor,
    qdot0: torch.Tensor,
    cfg: SimulatorConfig,
    forcing: Forcing | None = None,
) -> Rollout:
    """Integrate from (q0, q0') (B, k_q) for cfg.frames output frames.

    `shape` is one object shared by the batch, or a stack of B objects. `forcing` is batched (B, ...);
    None means no external force. Raises NeurokError (step, time, quantity) when the state stops being
    finite, the metric is not positive definite, the implicit step does not converge, or energy is
    created beyond cfg.max_energy_error.
    """
    steps_per_frame = cfg.steps_per_frame()
    batch, dtype, device = q0.shape[0], q0.dtype, q0.device
    if forcing is None:
        forcing = Forcing.stack([Forcing.build(shape.latent.num_vertices, dtype=dtype)] * batch)
    gravity = torch.tensor(cfg.gravity, dtype=dtype, device=device)
    system = System(shape, Physics(cfg.stiffness, cfg.damping, gravity, cfg.eps), forcing.to(device))
    if cfg.integrator == Integrator.midpoint:
        integrator = Midpoint(cfg.midpoint_iterations, cfg.midpoint_tol)
    else:
        integrator = RK4()

    def observe(state) -> Frame:
        x, J = system.jacobian(state.q)
        G = system.metric(J)
        v = integrator.velocity(system, state, G)
        kinetic = 0.5 * (v * matvec(G, v)).sum(-1)
        return Frame(state.q, v, x, kinetic, system.potential(state.q, x), state.work)

    with torch.no_grad():
        state = integrator.init(system, q0, qdot0)
        frames = [observe(state)]
        for n in range(1, cfg.frames * steps_per_frame + 1):
            t = n * cfg.dt
            try:
                state = integrator.step(system, state, t - cfg.dt, cfg.dt)
            except torch.linalg.LinAlgError:
                what = "the metric G is not positive definite (the state blew up, or the decoder ignores a q)"
                raise _stop(n, t, what, torch.arange(batch), cfg) from None
            except NotConverged as exc:
                what = (
                    f"the implicit midpoint step did not converge in {cfg.midpoint_iterations} iterations "
                    f"({exc}, tolerance simulator.midpoint_tol = {cfg.midpoint_tol:g}); "
                    f"integrator=rk4 also works"
                )
                raise _stop(n, t, what, (exc.residual > cfg.midpoint_tol).nonzero().flatten(), cfg) from None
            bad = ~torch.stack([torch.isfinite(x).reshape(batch, -1).all(1) for x in state], 1).all(1)
            if bad.any():
                raise _stop(n, t, "the state is not finite", bad.nonzero().flatten(), cfg)
            if n % steps_per_frame == 0:
                frames.append(observe(state))
                _check_energy(frames, n, t, cfg)
    stacked = Frame(*(torch.stack(f, dim=1) for f in zip(*frames, strict=True)))
    time = torch.arange(cfg.frames + 1, dtype=dtype, device=device) * (steps_per_frame * cfg.dt)
    return Rollout(time, *stacked)
