"""The Lagrangian of a decoded object in reduced coordinates q (research/neurok-paper.md s5.1, s9.2).

    x(q) = D(mu_cond + A^T q)               decoded vertices, (V, 3) (or a floating frame's: rigid.py)
    T = 1/2 q'^T G q',  G = J^T M J         kinetic energy and metric, J = dx/dq, M = vertex masses
    V = kappa/2 |P q|^2 + sum_v U_v(x_v)    negative log prior (restoring) on the elastic coordinates P,
        + k_s/2 max(0, |P q| - r)^2         and a wall where the prior's support ends (|P q| = r),
        U_v = -m_v g . x_v                  gravity (y-up g),
            + k_pin/2 m_v |x_v - p_v|^2     pins: a stiff, damped spring to where each vertex is held,
            + k_g/2 m_v min(0, y_v - h)^2   a ground plane at height h (penalty contact)
    G q'' = Q - D q' - C - dV/dq            Euler-Lagrange equations; V's stiff springs (pins, ground,
                                            wall) are kept apart as S: the integrator averages them
    C = J^T M D^2x[q', q']                  Christoffel (Coriolis and centrifugal) term, = G' q' - dT/dq
    Q = J^T f                               external forces that do not depend on the velocity
    D = J^T diag(d) J + c P G P             the forces linear in it: d_v the pins', the contact's and
                                            the drag's damping of vertex v, c the Rayleigh damping of P q

The functions are for one object and one state; `System` vectorises them over a batch with vmap.
J comes from k_q forward-mode derivatives (ReducedShape.jacobian_fn); C, which only RK4 needs, from one JVP
nested in a JVP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.func import jvp, vmap
from torch.utils._pytree import tree_leaves, tree_map

from neurok.dynamics.forces import Forcing, vertex_forces
from neurok.dynamics.shape import Position, ReducedShape


class Physics(NamedTuple):
    stiffness: float  # kappa
    damping: float  # c, 1/s
    gravity: torch.Tensor  # (3,) m/s^2
    eps: float  # relative regulariser of the metric solve
    elastic: torch.Tensor | float = (
        1.0  # (k,) P: 1 where kappa and c act (a floating frame's q, not c, theta)
    )
    pin_stiffness: float = 0.0  # 1/s^2: the pins hold the object's whole mass at this omega^2
    pin_damping: float = 0.0  # 1/s: and damp its velocity at the pins at this rate (critical: no overshoot)
    ground: float = -math.inf  # height of a ground plane y = h, -inf for none
    ground_stiffness: float = 0.0  # 1/s^2: k_g per unit mass of a vertex below the plane
    ground_damping: float = 0.0  # 1/s: a vertex below the plane feels -m_v c_g x'_v (impact and friction)
    support: float = math.inf  # r: |P q| past which the wall acts (the latents the decoder was trained on)
    support_stiffness: float = 0.0  # k_s
    springs: bool = True  # whether pins or a ground act: without, their (zero) terms are not computed


def curvature(position: Position, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D^2x[v, v] (V, 3): the vertices' acceleration at constant q' = v, by a JVP nested in a JVP."""
    return jvp(lambda q: jvp(position, (q,), (v,))[1], (q,), (v,))[1]


def pullback(J: torch.Tensor, masses: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """J^T M w (k_q,) of a per-vertex field w (V, 3): e.g. a momentum from vertex displacements."""
    return (masses[:, None] * w).flatten() @ J.flatten(0, 1)  # a matmul: ~3x cheaper than einsum here


def metric(J: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """G = J^T M J (k_q, k_q)."""
    return weighted_gram(J, masses)


def weighted_gram(J: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_v w_v J_v^T J_v (k, k) of J (V, 3, k), as one matmul (a 3-operand einsum costs ~2.5x as much
    at the sizes a step has)."""
    return (J * weights[:, None, None]).flatten(0, 1).mT @ J.flatten(0, 1)


def regularised(G: torch.Tensor, eps: float) -> torch.Tensor:
    """G + eps tr(G)/k_q I: the relative ridge keeps solves defined where the decoder barely moves along
    some q, or where two coordinates move the vertices alike (a latent direction that turns the object
    as the rigid frame does); the `tiny` floor keeps them defined for G = 0 (nothing prescribed)."""
    k = G.shape[-1]
    ridge = eps * G.diagonal(dim1=-2, dim2=-1).sum(-1) / k + torch.finfo(G.dtype).tiny
    return G + ridge[..., None, None] * torch.eye(k, dtype=G.dtype, device=G.device)


def solve_metric(G: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """regularised(G)^-1 b by Cholesky; a zero right-hand side gives zero."""
    L = torch.linalg.cholesky(regularised(G, eps))
    return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)


def _pin_mass(forcing: Forcing, masses: torch.Tensor) -> torch.Tensor:
    """(V,) the mass each pinned vertex holds: the whole object's, shared by pin weight, so the pins hold
    it at omega^2 = pin_stiffness whatever share of the mass they are; 0 elsewhere. Not by the vertices'
    own masses: a cubature steps pinned vertices with no mass of their own (dynamics.cubature)."""
    return forcing.pin * (masses.sum() / forcing.pin.sum().clamp_min(1e-12))  # finite when nothing is pinned


def _depth(physics: Physics, x: torch.Tensor) -> torch.Tensor:
    """(V,) how far each vertex is below the ground plane, as a negative number (0 above it)."""
    return (x[:, 1] - physics.ground).clamp_max(0)


def gravity_gradient(physics: Physics, masses: torch.Tensor) -> torch.Tensor:
    """d/dx (V, 3) of gravity's potential -sum_v m_v g . x_v."""
    return -masses[:, None] * physics.gravity


def spring_potential(
    physics: Physics, forcing: Forcing, masses: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pins' and the ground's springs: their energy and its gradient dU/dx (V, 3)."""
    pins = physics.pin_stiffness * _pin_mass(forcing, masses)
    stretch = x - forcing.pin_position
    depth = _depth(physics, x)
    ground = physics.ground_stiffness * masses * depth
    energy = 0.5 * (pins * stretch.square().sum(-1)).sum() + 0.5 * (ground * depth).sum()
    zero = torch.zeros_like(ground)
    return energy, pins[:, None] * stretch + torch.stack([zero, ground, zero], dim=-1)


def _beyond_support(physics: Physics, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max(0, |P q| - r) and P q / |P q|: how far and which way the coordinates are past the support."""
    elastic = physics.elastic * q
    norm = elastic.norm()
    return (norm - physics.support).clamp_min(0), elastic / norm.clamp_min(torch.finfo(q.dtype).tiny)


def prior_potential(
    physics: Physics, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The negative log prior and its support wall, then their gradients in q (k,).

    Why a wall: a decoder is only trained (and its surrogate only fitted) near the prior, and the prior's
    restoring force kappa is set per unit of the metric (shape.frequency). Where the decoder barely moves
    the vertices, kappa is tiny and a pin or a poke pushed q hundreds of prior deviations out, where the
    decoded shape is noise and the rollout blew up. The wall keeps q where the shapes are learned."""
    past, direction = _beyond_support(physics, q)
    return (
        0.5 * physics.stiffness * (physics.elastic * q.square()).sum(),
        0.5 * physics.support_stiffness * past.square(),
        physics.stiffness * physics.elastic * q,
        physics.support_stiffness * past * direction,
    )


def potential(
    physics: Physics, forcing: Forcing, masses: torch.Tensor, q: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    gravity = (gravity_gradient(physics, masses) * x).sum()
    return sum(prior_potential(physics, q)[:2]) + gravity + spring_potential(physics, forcing, masses, x)[0]


def stiffness_matrix(
    physics: Physics,
    forcing: Forcing,
    masses: torch.Tensor,
    q: torch.Tensor,
    x: torch.Tensor,
    J: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K (k, k), the potential's Hessian in q, Gauss-Newton for the vertex terms, in three parts: the
    prior's, the contacts' (ground, wall) and the pins'. Every vertex within 0.1 of the ground counts as
    touching it (a fall reaches it within a frame), and the support wall counts from 0.8 of its radius
    on. For the step size (simulator.steps_per_frame) and the position solve's slope."""
    walled = (physics.elastic * q).norm() > 0.8 * physics.support
    wall = physics.support_stiffness * walled * torch.ones_like(q) * physics.elastic
    prior = physics.stiffness * torch.ones_like(q) * physics.elastic
    if not physics.springs:
        return torch.diag(prior), torch.diag(wall), torch.zeros_like(J[0, 0]).diag()
    near = (x[:, 1] - physics.ground < 0.1).to(x.dtype)
    contacts = torch.diag(wall) + weighted_gram(J, physics.ground_stiffness * masses * near)
    return torch.diag(prior), contacts, weighted_gram(J, physics.pin_stiffness * _pin_mass(forcing, masses))


class Terms(NamedTuple):
    """The first-order terms of the equations of motion at one configuration q, for one object: the
    generalized force at a velocity v is Q - D v."""

    J: torch.Tensor  # (V, 3, k_q)
    G: torch.Tensor  # (k_q, k_q) metric
    grad_V: torch.Tensor  # (k_q,) dV/dq of the soft terms: the prior and gravity
    S: torch.Tensor  # () the stiff springs' energy: pins, ground, wall (V = soft + S)
    grad_S: torch.Tensor  # (k_q,) dS/dq
    Q: torch.Tensor  # (k_q,) external generalized force, independent of the velocity
    D: torch.Tensor  # (k_q, k_q) damping: the non-conservative forces linear in the velocity


def terms_from_jacobian(
    x: torch.Tensor,
    J: torch.Tensor,
    masses: torch.Tensor,
    physics: Physics,
    forcing: Forcing,
    q: torch.Tensor,
    t: float,
) -> Terms:
    """The terms at q given x and J there: products only, no decoder evaluation."""
    G = metric(J, masses)
    elastic = physics.elastic * torch.ones_like(q)
    S, grad_S = stiff_potential(physics, forcing, masses, q, x, J)
    fields = torch.stack([gravity_gradient(physics, masses), vertex_forces(forcing, masses, t)])
    gravity, Q = fields.flatten(1) @ J.flatten(0, 1)  # one product for both pull-backs
    grad_V = prior_potential(physics, q)[2] + gravity
    D = weighted_gram(J, vertex_damping(physics, forcing, masses, x)) + physics.damping * (
        elastic[:, None] * G * elastic
    )
    return Terms(J, G, grad_V, S, grad_S, Q, D)


def stiff_potential(
    physics: Physics,
    forcing: Forcing,
    masses: torch.Tensor,
    q: torch.Tensor,
    x: torch.Tensor,
    J: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """S and dS/dq (k,): the stiff springs' share of the potential (pins, ground, wall)."""
    _, wall, _, wall_gradient = prior_potential(physics, q)
    if not physics.springs:
        return wall, wall_gradient
    springs, gradient = spring_potential(physics, forcing, masses, x)
    return springs + wall, wall_gradient + gradient.flatten() @ J.flatten(0, 1)


def vertex_damping(physics: Physics, forcing: Forcing, masses: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d (V,) 1/s kg: vertex v feels -d_v x'_v from the pins' dampers, the ground's where it touches, and
    the drag."""
    if not physics.springs:
        return forcing.drag * masses
    touching = (_depth(physics, x) < 0).to(x.dtype)
    return (
        physics.ground_damping * masses * touching
        + physics.pin_damping * _pin_mass(forcing, masses)
        + forcing.drag * masses
    )


def coriolis(
    position: Position, masses: torch.Tensor, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """C = J^T M D^2x[v, v] (k_q,), the Christoffel term: G' v - dT/dq."""
    return pullback(J, masses, curvature(position, q, v))


def matvec(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A x over leading batch dimensions."""
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _first(arg, system: System):
    """arg's first batch item: a tensor's, or the forcing's (taken apart once per system)."""
    if isinstance(arg, torch.Tensor):
        return arg[0]
    if arg is system.forcing:
        if system._forcing_item is None:
            system._forcing_item = tree_map(lambda t: t[0], arg)
        return system._forcing_item
    return tree_map(lambda t: t[0], arg)


class System:
    """The mechanics of a batch of rollouts: the per-object functions above, vectorised with vmap.

    The batch is many states of one object, or a stack of objects with one state each.
    """

    def __init__(self, shape: ReducedShape, physics: Physics, forcing: Forcing):
        physics = physics._replace(springs=bool(forcing.pin.ne(0).any()) or physics.ground > -math.inf)
        self.physics, self.forcing, self.tensors = physics, forcing, shape.tensors
        self._forcing_item = None  # the forcing of a batch of one, without its batch axis (_first)
        self.total_mass = shape.tensors.masses.sum(-1)  # () or (B,)
        self._dims = shape.in_dims
        position = shape.position_fn
        self._position = self._batched(lambda q, s: position(s)(q), 0)
        self._jacobian = self._batched(lambda q, s: shape.jacobian_fn(s)(q), 0)
        self._pullback = self._batched(lambda J, w, s: pullback(J, s.masses, w), 0, 0)
        self._metric = self._batched(lambda J, s: metric(J, s.masses), 0)
        self._potential = self._batched(lambda q, x, f, s: potential(physics, f, s.masses, q, x), 0, 0, 0)
        self._terms_from_jacobian = self._batched(
            lambda x, J, q, t, f, s: terms_from_jacobian(x, J, s.masses, physics, f, q, t), 0, 0, 0, None, 0
        )
        self._stiff_potential = self._batched(
            lambda q, x, J, f, s: stiff_potential(physics, f, s.masses, q, x, J), 0, 0, 0, 0
        )
        self._stiffness = self._batched(
            lambda q, x, J, f, s: stiffness_matrix(physics, f, s.masses, q, x, J), 0, 0, 0, 0
        )
        self._coriolis = self._batched(lambda J, q, v, s: coriolis(position(s), s.masses, J, q, v), 0, 0, 0)

    def _batched(self, fn: Callable, *in_dims: int | None) -> Callable:
        """fn(*args, tensors) vmapped over the batch, called as f(*args). One object's tensors are closed
        over instead of passed: vmap would flatten the decoder's context pytree at every call (~15% of a
        rollout's time)."""
        if self._dims is None:
            mapped = vmap(lambda *args: fn(*args, self.tensors), in_dims=in_dims)

            def one_or_many(*args):
                if tree_leaves(args[in_dims.index(0)])[0].shape[0] != 1:
                    return mapped(*args)
                # one rollout: the function itself, without vmap's per-call cost (~0.3 ms, a third of a
                # fast step); tensors indexed directly and the forcing taken apart once, not by pytree
                # calls at every step (~15% of a step)
                first = [_first(a, self) if d == 0 else a for a, d in zip(args, in_dims, strict=True)]
                out = fn(*first, self.tensors)
                if isinstance(out, torch.Tensor):
                    return out[None]
                items = [o[None] for o in out]  # a tuple or NamedTuple of tensors
                return type(out)(*items) if hasattr(out, "_fields") else tuple(items)

            return one_or_many
        mapped = vmap(fn, in_dims=(*in_dims, self._dims))
        return lambda *args: mapped(*args, self.tensors)

    def position(self, q: torch.Tensor) -> torch.Tensor:
        return self._position(q)

    def jacobian(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._jacobian(q)

    def pullback(self, J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self._pullback(J, w)

    def metric(self, J: torch.Tensor) -> torch.Tensor:
        return self._metric(J)

    def potential(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._potential(q, x, self.forcing)

    def stiffness(
        self, q: torch.Tensor, x: torch.Tensor, J: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._stiffness(q, x, J, self.forcing)

    def stiff_potential(
        self, q: torch.Tensor, x: torch.Tensor, J: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._stiff_potential(q, x, J, self.forcing)

    def terms(self, q: torch.Tensor, t: float) -> Terms:
        return self.terms_from_jacobian(*self.jacobian(q), q, t)

    def terms_from_jacobian(self, x: torch.Tensor, J: torch.Tensor, q: torch.Tensor, t: float) -> Terms:
        return self._terms_from_jacobian(x, J, q, t, self.forcing)

    def coriolis(self, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._coriolis(J, q, v)

    def solve(self, G: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solve_metric(G, b, self.physics.eps)
