"""Latent rollouts: integrate the Euler-Lagrange equations of a batch of objects or conditions at once.

A batch is either many initial states and forcings of one object, or a stack of objects (one state
each). On the torch path the per-object mechanics are vectorised with torch.func.vmap (mechanics.System);
nothing loops over vertices or batch items. One surrogate-decoded object on a floating frame runs through
the compiled loop instead (dynamics.compiled, a batch item at a time: each is microseconds a step).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.func import jvp, vmap

from neurok.dynamics import compiled, modal
from neurok.dynamics.config import Integrator, SimulatorConfig
from neurok.dynamics.forces import Forcing, PointForce
from neurok.dynamics.integrators import RK4, NotConverged, Variational
from neurok.dynamics.mechanics import Physics, System, matvec
from neurok.dynamics.rigid import RIGID, FloatingShape
from neurok.dynamics.shape import ReducedShape
from neurok.errors import NeurokError

log = logging.getLogger(__name__)


def relative_energy_error(kinetic: torch.Tensor, potential: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """(E_t - E_0 - W_t) / (max_{s<=t} T_s + |W_t|) along the last axis, E = T + V, W the work of the
    non-conservative forces: zero for exact dynamics.

    The scale is the energy in play (the peak kinetic energy of a free oscillation), not E_0 itself,
    which depends on where gravity's zero is; it is at least compiled.ENERGY_FLOOR, below which errors are
    round-off.
    """
    error = kinetic + potential - (kinetic[..., :1] + potential[..., :1]) - work
    scale = kinetic.cummax(dim=-1).values + work.abs() + compiled.ENERGY_FLOOR
    return error / scale


@dataclass
class Rollout:
    """A batch of rollouts sampled at the output frame rate; frame 0 is the initial state."""

    time: torch.Tensor  # (F + 1,) s
    q: torch.Tensor  # (B, F + 1, k_q)
    qdot: torch.Tensor  # (B, F + 1, k_q)
    vertices: torch.Tensor  # (B, F + 1, V, 3)
    velocities: torch.Tensor  # (B, F + 1, V, 3) of the vertices, J q'
    kinetic: torch.Tensor  # (B, F + 1) J
    potential: torch.Tensor  # (B, F + 1) J
    work: torch.Tensor  # (B, F + 1) J, done by external forces and damping since t = 0
    steps: list[int]  # integrator steps of each frame interval (cfg.dt's, or more: see rollout)
    path: str = "torch"  # which implementation ran: "compiled" (dynamics.compiled) or "torch"

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
    velocities: torch.Tensor
    kinetic: torch.Tensor
    potential: torch.Tensor
    work: torch.Tensor


def failure(code: int, value: float, cfg: SimulatorConfig) -> str:
    """What went wrong in a step or frame, by compiled's failure codes (both paths use them)."""
    if code == compiled.NOT_POSITIVE_DEFINITE:
        return "the metric G is not positive definite (the state blew up, or the decoder ignores a q)"
    if code == compiled.NOT_CONVERGED:
        return (
            f"the variational step's position solve did not converge in {cfg.solver_iterations} iterations "
            f"(the last correction moved the vertices by {value:.3g} (RMS), tolerance simulator.solver_tol = "
            f"{cfg.solver_tol:g})"
        )
    if code == compiled.NOT_FINITE:
        return "the state is not finite"
    return (
        f"the total energy error |E - E0 - W| is {value:.3g} of the energy in play "
        f"(limit simulator.max_energy_error = {cfg.max_energy_error:g})"
    )


def _stop(step: int, t: float, what: str, items: torch.Tensor, dt: float) -> NeurokError:
    return NeurokError(
        f"latent rollout blew up at step {step} (t = {t:.4f} s), batch item(s) {items.tolist()}: {what}. "
        f"Reduce simulator.dt (now {dt:g} s) or the forces, or raise simulator.damping"
    )


def fastest_mode(G: torch.Tensor, K: torch.Tensor) -> float:
    """rad/s: the highest frequency of K phi = omega^2 G phi over a batch of metrics and stiffnesses
    (B, k, k); inf where G is not positive definite. Gravity and forces do not enter: an estimate."""
    L, info = torch.linalg.cholesky_ex(G)
    if info.any():
        return math.inf
    half = torch.linalg.solve_triangular(L, K, upper=False)
    reduced = torch.linalg.solve_triangular(L, half.mT, upper=False)  # L^-1 K L^-T
    return math.sqrt(max(torch.linalg.eigvalsh(reduced).amax().item(), 0.0))


MAX_REFINEMENT = 16  # steps per frame at most this many times cfg's: past it, the guards decide


def steps_per_frame(cfg: SimulatorConfig, omega: float, omega_contacts: float, omega_pins: float) -> int:
    """cfg's steps per output frame, or more (up to MAX_REFINEMENT times), so that omega dt <=
    cfg.max_omega_dt for the fastest mode of the soft terms (the variational integrator's energy error is
    about (omega dt)^2 / 8, so the default 0.2 keeps it near 0.5%), <= cfg.max_omega_dt_contacts with the
    contacts (ground, wall) too, and <= cfg.max_omega_dt_pins with the pins too. The integrator keeps the
    stiff springs' energy at any step (integrators.mean_gradient), so the step only needs to follow them:
    at omega dt = 1 a critically damped spring's response is within 6% of the exact one, at 2 it settles
    within the step. A contact switches on within a step and shapes a landing, so it is followed more
    finely than a pin, which only holds."""
    steps = cfg.steps_per_frame()
    if not cfg.max_omega_dt:
        return steps
    most = MAX_REFINEMENT * steps
    omegas = (omega, omega_contacts, omega_pins)
    if any(math.isinf(w) for w in omegas):
        return most
    limits = (cfg.max_omega_dt, cfg.max_omega_dt_contacts, cfg.max_omega_dt_pins)
    needed = max(w / limit for w, limit in zip(omegas, limits, strict=True)) / cfg.fps
    return min(max(steps, math.ceil(needed)), most)


def _check_energy(frames: list[Frame], steps: int, t: float, cfg: SimulatorConfig) -> None:
    """Raise _StepFailed at the frame's last step when its energy error is over the limit."""
    energy = (torch.stack([getattr(f, k) for f in frames], -1) for k in ("kinetic", "potential", "work"))
    ratio = relative_energy_error(*energy)[:, -1].abs()
    over = ~(ratio <= cfg.max_energy_error)  # NaN counts as over
    if over.any():
        what = failure(compiled.ENERGY, ratio.max().item(), cfg)
        raise _StepFailed(steps, t, what, over.nonzero().flatten())


class _StepFailed(Exception):
    """A step of a frame failed: where, what, and which batch items."""

    def __init__(self, step: int, t: float, what: str, items: torch.Tensor):
        super().__init__(what)
        self.step, self.t, self.what, self.items = step, t, what, items


def _frame(integrator, system: System, state, t0: float, steps: int, cfg: SimulatorConfig):
    """The state one output frame after `state` (at time t0), in `steps` equal steps."""
    dt = 1 / (cfg.fps * steps)
    for i in range(1, steps + 1):
        t = t0 + i * dt
        try:
            state = integrator.step(system, state, t - dt, dt)
        except torch.linalg.LinAlgError:
            what = failure(compiled.NOT_POSITIVE_DEFINITE, 0.0, cfg)
            raise _StepFailed(i, t, what, torch.arange(state.q.shape[0])) from None
        except NotConverged as exc:
            what = failure(compiled.NOT_CONVERGED, exc.residual.max().item(), cfg)
            raise _StepFailed(i, t, what, (exc.residual > cfg.solver_tol).nonzero().flatten()) from None
    # once a frame, not a step: a non-finite value stays so (or stops the position solve first)
    batch = state.q.shape[0]
    bad = ~torch.stack([torch.isfinite(x).reshape(batch, -1).all(1) for x in state], 1).all(1)
    if bad.any():
        what = failure(compiled.NOT_FINITE, 0.0, cfg)
        raise _StepFailed(steps, t0 + steps * dt, what, bad.nonzero().flatten())
    return state


def decoded(shape: ReducedShape | FloatingShape, frames: Frame) -> tuple[torch.Tensor, torch.Tensor]:
    """Every vertex's position and velocity (B, F, V, 3) at frames (B, F) of one object's coordinates."""
    q, v = frames.q.flatten(0, 1), frames.qdot.flatten(0, 1)
    position = shape.position_fn(shape.tensors)
    with torch.no_grad():  # x and J q' in one forward-mode pass: J itself (V, 3, k) is never formed
        x, velocities = vmap(lambda q, v: jvp(position, (q,), (v,)), chunk_size=8)(q, v)
    return x.unflatten(0, frames.q.shape[:2]), velocities.unflatten(0, frames.q.shape[:2])


def physics_of(shape: ReducedShape | FloatingShape, cfg: SimulatorConfig, dtype, device) -> Physics:
    """The simulator config's physics for `shape`: spring constants from their frequencies."""
    pin, ground = 2 * math.pi * cfg.pin_frequency, 2 * math.pi * cfg.ground_frequency  # rad/s
    return Physics(
        cfg.stiffness,
        cfg.damping,
        torch.tensor(cfg.gravity, dtype=dtype, device=device),
        cfg.eps,
        shape.elastic.to(dtype),
        pin**2,
        2 * cfg.pin_damping * pin,
        -math.inf if cfg.ground is None else cfg.ground,
        ground**2,
        2 * cfg.ground_damping * ground,
    )


def with_support(physics: Physics, cfg: SimulatorConfig, G: torch.Tensor) -> Physics:
    """`physics` with the wall at the prior's support (cfg.support), its stiffness set from the metric G
    (B, k, k) at the start: the deformation's mean inertia times (2 pi cfg.support_frequency)^2."""
    if cfg.support is None:
        return physics
    elastic = torch.as_tensor(physics.elastic, dtype=G.dtype, device=G.device).expand(G.shape[-1])
    inertia = (G.diagonal(dim1=-2, dim2=-1) * elastic).sum(-1).mean() / elastic.sum().clamp_min(1)
    return physics._replace(
        support=cfg.support * math.sqrt(float(elastic.sum())),
        support_stiffness=float(inertia) * (2 * math.pi * cfg.support_frequency) ** 2,
    )


def compiled_applies(shape: ReducedShape | FloatingShape, cfg: SimulatorConfig) -> bool:
    """Whether rollout() runs `shape` through the compiled loop: one surrogate-decoded object on a floating
    frame, the variational integrator, and simulator.compiled on."""
    return cfg.compiled and Integrator(cfg.integrator) == Integrator.variational and modal.applies(shape)


def _compiled_item(
    parts: tuple[modal.Body, np.ndarray, np.ndarray, np.ndarray, modal.Vertices],
    physics: Physics,
    stepping: compiled.Stepping,
    forcing: Forcing,
    s0: np.ndarray,
    v0: np.ndarray,
) -> tuple:
    """compiled.run for one rollout of a body; `parts` are the body, its centred a, E, m and the ground's
    vertices, `forcing` the rollout's own (no batch axis)."""
    body, a, E, m, plane = parts
    params = compiled.Params(
        float(physics.stiffness),
        float(physics.damping),
        modal.as_float64(physics.gravity),
        float(physics.eps),
        float(physics.pin_stiffness),
        float(physics.pin_damping),
        float(physics.ground),
        float(physics.ground_stiffness),
        float(physics.ground_damping),
        float(physics.support),
        float(physics.support_stiffness),
        float(forcing.drag),
        modal.as_float64(forcing.wind),
    )
    pins, loads = modal.pinned(a, E, m, forcing), modal.loads(a, E, forcing)
    return compiled.run(
        body, params, pins, plane, loads, modal.as_float64(s0), modal.as_float64(v0), stepping
    )


def _stepping(cfg: SimulatorConfig) -> compiled.Stepping:
    base = cfg.steps_per_frame()
    return compiled.Stepping(
        float(cfg.fps),
        int(cfg.frames),
        base,
        MAX_REFINEMENT * base if cfg.max_omega_dt else base,
        float(cfg.max_omega_dt),
        float(cfg.max_omega_dt_contacts),
        float(cfg.max_omega_dt_pins),
        float(cfg.max_energy_error),
        int(cfg.solver_iterations),
        float(cfg.solver_tol),
    )


def _start_metric(body: modal.Body, q0: torch.Tensor) -> np.ndarray:
    """The metric (B, n, n) at each rollout's start, from the moments: O(r^2), not O(V)."""
    starts = (compiled.evaluate(body, modal.as_float64(s)) for s in q0)
    return np.stack([compiled.gram(body.mass, ev, ev[4]) for ev in starts])


def _compiled_rollout(
    shape: FloatingShape,
    q0: torch.Tensor,
    qdot0: torch.Tensor,
    cfg: SimulatorConfig,
    forcing: Forcing,
    physics: Physics,
    prepared: modal.Prepared,
) -> Rollout:
    """rollout() through dynamics.compiled, one batch item at a time; `physics` without the support
    wall, whose stiffness comes from the metric at q0, here from the moments."""
    warm_up()
    body, a, E, m = prepared
    physics = with_support(physics, cfg, torch.from_numpy(_start_metric(body, q0)))
    plane = modal.every_vertex(*(t[: len(t) if physics.ground > -math.inf else 0] for t in (a, E, m)))
    stepping = _stepping(cfg)
    runs = []
    for b in range(q0.shape[0]):
        item = Forcing(*(t[b] for t in forcing))
        *frames, used, (code, step, t, value, dt) = _compiled_item(
            (body, a, E, m, plane), physics, stepping, item, q0[b], qdot0[b]
        )
        if code != compiled.OK:
            raise _stop(int(step), t, failure(code, value, cfg), torch.tensor([b]), dt)
        runs.append((frames, used))
    coords, rates, kinetic, potential, work = (np.stack([r[0][i] for r in runs]) for i in range(5))
    # decoded straight into the rollout's dtype: no float64 copy of every vertex of every frame
    vertices, velocities = torch.empty(2, *coords.shape[:2], len(a), 3, dtype=q0.dtype)
    flat = (t.reshape(-1, t.shape[-1]) for t in (coords, rates))
    compiled.decode(body, a, E, *flat, *(t.flatten(0, 1).numpy() for t in (vertices, velocities)))
    vertices, velocities = vertices.to(q0.device), velocities.to(q0.device)
    q, v, kinetic, potential, work = (
        torch.from_numpy(t).to(q0) for t in (coords, rates, kinetic, potential, work)
    )
    time = torch.arange(cfg.frames + 1, dtype=q0.dtype, device=q0.device) / cfg.fps
    steps = np.max([r[1] for r in runs], axis=0).tolist()  # of the batch item that needed the most
    return Rollout(time, q, v, vertices, velocities, kinetic, potential, work, steps, "compiled")


def warm_up() -> None:
    """Load (or on a fresh install, compile: about a minute) the compiled loop, with a one-frame rollout of
    a two-vertex body, so that a timed rollout does not pay for it; once a process, and said first, so
    a first run on a new machine is not a silent minute."""
    if compiled.run.signatures:
        return
    log.info("loading the compiled simulator loop (the first time on a machine it compiles: about a minute)")
    a, E, m = np.array([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]), np.zeros((2, 3, 1)), np.ones(2)
    one = np.ones((1, 1))
    net = modal.Network(one, np.zeros(1), one, one, np.zeros(1), one, np.zeros(1))
    body = modal.Body(net, modal.weighted(a, E, m))
    cfg = SimulatorConfig(frames=1)
    physics = Physics(1.0, 0.0, torch.tensor([0.0, -9.81, 0.0], dtype=torch.float64), cfg.eps)
    forcing = Forcing.build(2, [PointForce(torch.ones(2), [1.0, 0.0, 0.0])], dtype=torch.float64)
    s0 = np.zeros(RIGID + 1)
    run = _compiled_item(
        (body, a, E, m, modal.every_vertex(a, E, m)), physics, _stepping(cfg), forcing, s0, s0
    )
    _start_metric(body, torch.from_numpy(s0[None]))
    for dtype in (np.float64, np.float32):  # the rollouts' two dtypes
        compiled.decode(body, a, E, run[0], run[1], *np.empty((2, len(run[0]), len(a), 3), dtype))


def rollout(
    shape: ReducedShape | FloatingShape,
    q0: torch.Tensor,
    qdot0: torch.Tensor,
    cfg: SimulatorConfig,
    forcing: Forcing | None = None,
    output: ReducedShape | FloatingShape | None = None,
    prepared: modal.Prepared | None = None,
) -> Rollout:
    """Integrate from (q0, q0') (B, k) for cfg.frames output frames.

    `output`, when given, is the whole object of which `shape` is a cubature (dynamics.cubature): the
    steps run on `shape`'s points, and the frames' vertices and velocities are decoded from `output`.
    `shape` is one object shared by the batch, or a stack of B objects; a FloatingShape adds the rigid
    frame (q0 then starts with its 6 coordinates). `forcing` is batched (B, ...); None means no external
    force. Each frame is integrated in equal steps, cfg.dt or finer: with cfg.max_omega_dt set, fine
    enough for the fastest mode at the frame's start, and a frame whose step fails is retried with twice
    the steps, up to MAX_REFINEMENT times cfg's. One surrogate-decoded object on a floating frame runs
    through dynamics.compiled (compiled_applies), the same integrator as one compiled loop, with the
    object's moments from `prepared` (modal.prepare) when given. Raises NeurokError (step, time,
    quantity) when the state stops being finite, the metric is not positive definite, the implicit step
    does not converge, or energy is created beyond cfg.max_energy_error.
    """
    batch, dtype, device = q0.shape[0], q0.dtype, q0.device
    if forcing is None:
        forcing = Forcing.stack([Forcing.build(shape.latent.num_vertices, dtype=dtype)] * batch)
    physics, forcing = physics_of(shape, cfg, dtype, device), forcing.to(device)
    if output is None and compiled_applies(shape, cfg):
        return _compiled_rollout(shape, q0, qdot0, cfg, forcing, physics, prepared or modal.prepare(shape))
    with torch.no_grad():
        start = System(shape, physics, forcing)
        physics = with_support(physics, cfg, start.metric(start.jacobian(q0)[1]))
    system = System(shape, physics, forcing)
    integrators = {
        Integrator.variational: lambda: Variational(cfg.solver_iterations, cfg.solver_tol),
        Integrator.rk4: RK4,
    }
    integrator = integrators[Integrator(cfg.integrator)]()

    def observe(state) -> tuple[Frame, torch.Tensor, torch.Tensor]:
        x, v, G, J = integrator.observe(system, state)
        kinetic = 0.5 * (v * matvec(G, v)).sum(-1)
        velocities = torch.einsum("bvik,bk->bvi", J, v)
        return Frame(state.q, v, x, velocities, kinetic, system.potential(state.q, x), state.work), G, J

    most = MAX_REFINEMENT * cfg.steps_per_frame() if cfg.max_omega_dt else cfg.steps_per_frame()
    with torch.no_grad():
        state = integrator.init(system, q0, qdot0)
        frame, G, J = observe(state)
        frames, used = [frame], []
        for f in range(cfg.frames):
            soft, contacts, pins = system.stiffness(frame.q, frame.vertices, J)
            omegas = [fastest_mode(G, K) for K in (soft, soft + contacts, soft + contacts + pins)]
            steps = steps_per_frame(cfg, *omegas)
            while True:
                try:
                    new = _frame(integrator, system, state, f / cfg.fps, steps, cfg)
                    frame, new_G, new_J = observe(new)
                    _check_energy([*frames, frame], steps, (f + 1) / cfg.fps, cfg)
                    break
                except _StepFailed as fail:
                    if 2 * steps > most:
                        dt = 1 / (cfg.fps * steps)
                        raise _stop(sum(used) + fail.step, fail.t, fail.what, fail.items, dt) from None
                    steps *= 2
            state, G, J = new, new_G, new_J
            moved = shape.rechart(frame.q, frame.qdot)
            if moved is not None:  # the same configuration in coordinates inside the regular chart
                state = integrator.init(system, *moved, (f + 1) / cfg.fps)._replace(work=state.work)
                frame, G, J = observe(state)
            used.append(steps)
            frames.append(frame)
    stacked = Frame(*(torch.stack(f, dim=1) for f in zip(*frames, strict=True)))
    if output is not None:
        stacked = stacked._replace(
            **dict(zip(("vertices", "velocities"), decoded(output, stacked), strict=True))
        )
    time = torch.arange(cfg.frames + 1, dtype=dtype, device=device) / cfg.fps
    return Rollout(time, *stacked, used)
