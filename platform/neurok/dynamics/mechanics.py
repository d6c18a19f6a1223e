"""The Lagrangian of a decoded object in reduced coordinates q (research/neurok-paper.md s5.1, s9.2).

    x(q) = D(mu_cond + A^T q)               decoded vertices, (V, 3) (or a floating frame's: rigid.py)
    T = 1/2 q'^T G q',  G = J^T M J         kinetic energy and metric, J = dx/dq, M = vertex masses
    V = kappa/2 |P q|^2 + sum_v U_v(x_v)    negative log prior (restoring) on the elastic coordinates P,
        + k_s/2 max(0, |P q| - r)^2         and a wall where the prior's support ends (|P q| = r),
        U_v = -m_v g . x_v                  gravity (y-up g),
            + k_pin/2 m_v |x_v - p_v|^2     pins: a stiff, damped spring to where each vertex is held,
            + k_g/2 m_v min(0, y_v - h)^2   a ground plane at height h (penalty contact)
    G q'' = Q - C - dV/dq                   Euler-Lagrange equations
    C = J^T M D^2x[q', q']                  Christoffel (Coriolis and centrifugal) term, = G' q' - dT/dq
    Q = J^T f - c P G P q'                  external forces, pin and contact damping, Rayleigh of P q

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


def vertex_potential(
    physics: Physics, forcing: Forcing, masses: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_v U_v(x_v) and its gradient dU/dx (V, 3): gravity, pins, ground."""
    pins = physics.pin_stiffness * _pin_mass(forcing, masses)
    stretch = x - forcing.pin_position
    ground = physics.ground_stiffness * masses * _depth(physics, x)
    energy = (
        -masses @ (x @ physics.gravity)
        + 0.5 * (pins * stretch.square().sum(-1)).sum()
        + 0.5 * (ground * _depth(physics, x)).sum()
    )
    zero = torch.zeros_like(ground)
    up = torch.stack([zero, ground, zero], dim=-1)
    return energy, -masses[:, None] * physics.gravity + pins[:, None] * stretch + up


def _beyond_support(physics: Physics, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max(0, |P q| - r) and P q / |P q|: how far and which way the coordinates are past the support."""
    elastic = physics.elastic * q
    norm = elastic.norm()
    return (norm - physics.support).clamp_min(0), elastic / norm.clamp_min(torch.finfo(q.dtype).tiny)


def prior_potential(physics: Physics, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The negative log prior with its support wall, and its gradient in q (k,).

    Why a wall: a decoder is only trained (and its surrogate only fitted) near the prior, and the prior's
    restoring force kappa is set per unit of the metric (shape.frequency). Where the decoder barely moves
    the vertices, kappa is tiny and a pin or a poke pushed q hundreds of prior deviations out, where the
    decoded shape is noise and the rollout blew up. The wall keeps q where the shapes are learned."""
    past, direction = _beyond_support(physics, q)
    energy = (
        0.5 * physics.stiffness * (physics.elastic * q.square()).sum()
        + 0.5 * physics.support_stiffness * past.square()
    )
    gradient = physics.stiffness * physics.elastic * q + physics.support_stiffness * past * direction
    return energy, gradient


def potential(
    physics: Physics, forcing: Forcing, masses: torch.Tensor, q: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    return prior_potential(physics, q)[0] + vertex_potential(physics, forcing, masses, x)[0]


def stiffness_matrix(
    physics: Physics,
    forcing: Forcing,
    masses: torch.Tensor,
    q: torch.Tensor,
    x: torch.Tensor,
    J: torch.Tensor,
) -> torch.Tensor:
    """K (k, k): the potential's Hessian in q, Gauss-Newton for the vertex terms, with every vertex within
    0.1 of the ground counted as touching it (a fall reaches it within a frame), and the support wall
    counted from 0.8 of its radius on. For the step size."""
    near = (x[:, 1] - physics.ground < 0.1).to(x.dtype)
    springs = physics.pin_stiffness * _pin_mass(forcing, masses) + physics.ground_stiffness * masses * near
    walled = (physics.elastic * q).norm() > 0.8 * physics.support
    prior = (physics.stiffness + physics.support_stiffness * walled) * torch.ones_like(q) * physics.elastic
    return torch.diag(prior) + weighted_gram(J, springs)


class Terms(NamedTuple):
    """The first-order terms of the equations of motion at one state (q, v = q'), for one object."""

    J: torch.Tensor  # (V, 3, k_q)
    G: torch.Tensor  # (k_q, k_q) metric
    grad_V: torch.Tensor  # (k_q,) dV/dq
    Q: torch.Tensor  # (k_q,) non-conservative generalized force: external and damping


def terms_from_jacobian(
    x: torch.Tensor,
    J: torch.Tensor,
    masses: torch.Tensor,
    physics: Physics,
    forcing: Forcing,
    q: torch.Tensor,
    v: torch.Tensor,
    t: float,
) -> Terms:
    """The terms at (q, v) given x and J there: products only, no decoder evaluation."""
    G = metric(J, masses)
    elastic = physics.elastic * torch.ones_like(q)
    grad_V = prior_potential(physics, q)[1] + vertex_potential(physics, forcing, masses, x)[
        1
    ].flatten() @ J.flatten(0, 1)
    xdot = J @ v
    touching = (_depth(physics, x) < 0).to(x.dtype)
    held = physics.ground_damping * masses * touching + physics.pin_damping * _pin_mass(forcing, masses)
    f = vertex_forces(forcing, masses, t, xdot) - held[:, None] * xdot
    Q = f.flatten() @ J.flatten(0, 1) - physics.damping * elastic * (G @ (elastic * v))
    return Terms(J, G, grad_V, Q)


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
            lambda x, J, q, v, t, f, s: terms_from_jacobian(x, J, s.masses, physics, f, q, v, t),
            0,
            0,
            0,
            0,
            None,
            0,
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

    def stiffness(self, q: torch.Tensor, x: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
        return self._stiffness(q, x, J, self.forcing)

    def terms(self, q: torch.Tensor, v: torch.Tensor, t: float) -> Terms:
        return self.terms_from_jacobian(*self.jacobian(q), q, v, t)

    def terms_from_jacobian(
        self, x: torch.Tensor, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor, t: float
    ) -> Terms:
        return self._terms_from_jacobian(x, J, q, v, t, self.forcing)

    def coriolis(self, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._coriolis(J, q, v)

    def solve(self, G: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solve_metric(G, b, self.physics.eps)
