"""The Lagrangian of a decoded object in reduced coordinates q (research/neurok-paper.md s5.1, s9.2).

    x(q) = D(mu_cond + A^T q)               decoded vertices, (V, 3)
    T = 1/2 q'^T G q',  G = J^T M J         kinetic energy and metric, J = dx/dq, M = vertex masses
    V = kappa/2 |q|^2 - sum_v m_v g . x_v   negative log prior (restoring) + gravity (y-up g)
    G q'' = Q - C - dV/dq                   Euler-Lagrange equations
    C = J^T M D^2x[q', q']                  Christoffel (Coriolis and centrifugal) term, = G' q' - dT/dq
    Q = J^T f_ext - c G q'                  external generalized forces and Rayleigh damping

The functions are for one object and one state; `System` vectorises them over a batch with vmap.
J comes from k_q forward-mode derivatives (ReducedShape.jacobian_fn); C, which only RK4 needs, from one JVP
nested in a JVP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch.func import jvp, vmap

from neurok.dynamics.forces import Forcing, vertex_forces
from neurok.dynamics.shape import Position, ReducedShape


class Physics(NamedTuple):
    stiffness: float  # kappa
    damping: float  # c, 1/s
    gravity: torch.Tensor  # (3,) m/s^2
    eps: float  # relative regulariser of the metric solve


def curvature(position: Position, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D^2x[v, v] (V, 3): the vertices' acceleration at constant q' = v, by a JVP nested in a JVP."""
    return jvp(lambda q: jvp(position, (q,), (v,))[1], (q,), (v,))[1]


def pullback(J: torch.Tensor, masses: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """J^T M w (k_q,) of a per-vertex field w (V, 3): e.g. a momentum from vertex displacements."""
    return torch.einsum("vik,v,vi->k", J, masses, w)


def metric(J: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """G = J^T M J (k_q, k_q)."""
    return torch.einsum("vik,v,vil->kl", J, masses, J)


def solve_metric(G: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """(G + eps tr(G)/k_q I)^-1 b by Cholesky.

    The relative ridge keeps the solve defined where the decoder barely moves along some q; the `tiny`
    floor keeps it defined for G = 0 (nothing prescribed), where a zero right-hand side gives zero.
    """
    k = G.shape[-1]
    ridge = eps * G.diagonal(dim1=-2, dim2=-1).sum(-1) / k + torch.finfo(G.dtype).tiny
    eye = torch.eye(k, dtype=G.dtype, device=G.device)
    L = torch.linalg.cholesky(G + ridge[..., None, None] * eye)
    return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)


def potential(physics: Physics, masses: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * physics.stiffness * q.square().sum() - torch.einsum("v,vi,i->", masses, x, physics.gravity)


class Terms(NamedTuple):
    """The first-order terms of the equations of motion at one state (q, v = q'), for one object."""

    J: torch.Tensor  # (V, 3, k_q)
    G: torch.Tensor  # (k_q, k_q) metric
    grad_V: torch.Tensor  # (k_q,) dV/dq
    Q: torch.Tensor  # (k_q,) non-conservative generalized force: external and damping


def terms_from_jacobian(
    J: torch.Tensor,
    masses: torch.Tensor,
    physics: Physics,
    forcing: Forcing,
    q: torch.Tensor,
    v: torch.Tensor,
    t: float,
) -> Terms:
    """The terms at (q, v) given J there: einsums only, no decoder evaluation."""
    G = metric(J, masses)
    grad_V = physics.stiffness * q - torch.einsum("vik,v,i->k", J, masses, physics.gravity)
    f = vertex_forces(forcing, masses, t, torch.einsum("vik,k->vi", J, v))
    Q = torch.einsum("vik,vi->k", J, f) - physics.damping * G @ v
    return Terms(J, G, grad_V, Q)


def coriolis(
    position: Position, masses: torch.Tensor, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """C = J^T M D^2x[v, v] (k_q,), the Christoffel term: G' v - dT/dq."""
    return pullback(J, masses, curvature(position, q, v))


def matvec(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A x over leading batch dimensions."""
    return (A @ x.unsqueeze(-1)).squeeze(-1)


class System:
    """The mechanics of a batch of rollouts: the per-object functions above, vectorised with vmap.

    The batch is many states of one object, or a stack of objects with one state each.
    """

    def __init__(self, shape: ReducedShape, physics: Physics, forcing: Forcing):
        self.physics, self.forcing, self.tensors = physics, forcing, shape.tensors
        self.total_mass = shape.tensors.masses.sum(-1)  # () or (B,)
        self._dims = shape.in_dims
        position = shape.position_fn
        self._position = self._batched(lambda q, s: position(s)(q), 0)
        self._jacobian = self._batched(lambda q, s: shape.jacobian_fn(s)(q), 0)
        self._pullback = self._batched(lambda J, w, s: pullback(J, s.masses, w), 0, 0)
        self._metric = self._batched(lambda J, s: metric(J, s.masses), 0)
        self._potential = self._batched(lambda q, x, s: potential(physics, s.masses, q, x), 0, 0)
        self._terms_from_jacobian = self._batched(
            lambda J, q, v, t, f, s: terms_from_jacobian(J, s.masses, physics, f, q, v, t), 0, 0, 0, None, 0
        )
        self._coriolis = self._batched(lambda J, q, v, s: coriolis(position(s), s.masses, J, q, v), 0, 0, 0)

    def _batched(self, fn: Callable, *in_dims: int | None) -> Callable:
        """fn(*args, tensors) vmapped over the batch, called as f(*args). One object's tensors are closed
        over instead of passed: vmap would flatten the decoder's context pytree at every call (~15% of a
        rollout's time)."""
        if self._dims is None:
            return vmap(lambda *args: fn(*args, self.tensors), in_dims=in_dims)
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
        return self._potential(q, x)

    def terms(self, q: torch.Tensor, v: torch.Tensor, t: float) -> Terms:
        return self.terms_from_jacobian(self.jacobian(q)[1], q, v, t)

    def terms_from_jacobian(self, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor, t: float) -> Terms:
        return self._terms_from_jacobian(J, q, v, t, self.forcing)

    def coriolis(self, J: torch.Tensor, q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self._coriolis(J, q, v)

    def solve(self, G: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return solve_metric(G, b, self.physics.eps)
