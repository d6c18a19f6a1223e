"""A surrogate-decoded object on a floating frame, as the mass moments of its modes: what the compiled
rollout (dynamics.compiled) steps instead of vertices.

With the surrogate (dynamics.surrogate) every vertex is linear in the network's output g (r,):

    y_v(g) = a_v + E_v g        the shape about its centre of mass (a_v (3,), E_v (3, r), both centred)
    x_v(s) = c + Rot(theta) y_v(g(q))

so each mass-weighted sum over the vertices that the Lagrangian needs is a polynomial in g whose
coefficients are sums computed once per object (O(V r^2)), after which a step costs O(r^2), whatever
the vertex count, and exactly (no cubature error):

    M = sum m_v,   S0 = sum m a a^T (3, 3),   F[i, j] = sum m E_v[i] a_v[j] (3, 3, r),
    K[i, j] = sum m E_v[i]^T E_v[j] (3, 3, r, r)

(sum m a = 0 and sum m E = 0: the frame's c is the centre of mass.) The metric's blocks are M I, the
inertia tr(S) I - S with S = sum m y y^T, the rotation-deformation coupling sum m hat(y) E, and
sum m E^T E = tr K; the integrator's pull-back of a displacement needs the cross moment
sum m y(g_n) y(g)^T. All come from Y[i, j] = sum m E_v[i] y_v[j] = F[i, j] + K[i, j] g (compiled.evaluate).

Terms at single vertices keep their vertices: the pins (a few), the point forces (through their
regions' weighted means, exact: a force's generalized force is linear in y), and a ground plane (every
vertex that can reach it).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from neurok.dynamics.forces import Forcing
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.surrogate import SurrogateContext


class Moments(NamedTuple):
    """Sums over a set of vertices with weights w of the polynomials in g the terms need (module
    docstring), float64. A body's mass moments have a = 0 and E = 0 (centred); its pins' do not."""

    weight: float  # sum w
    a: np.ndarray  # (3,) sum w a_v
    E: np.ndarray  # (3, r) sum w E_v
    S0: np.ndarray  # (3, 3) sum w a a^T
    F: np.ndarray  # (3, 3, r) F[i, j] = sum w E_v[i] a_v[j]
    K: np.ndarray  # (3, 3, r, r) K[i, j] = sum w E_v[i]^T E_v[j]
    KK: np.ndarray  # (r, r) sum_i K[i, i] = sum w E_v^T E_v


class Network(NamedTuple):
    """The surrogate's g(u) = L u + W (tanh(A u + b) - tanh(b)) of the input u = T q + offset (float64)."""

    T: np.ndarray  # (k, k)
    offset: np.ndarray  # (k,)
    L: np.ndarray  # (r, k)
    A: np.ndarray  # (h, k)
    b: np.ndarray  # (h,)
    W: np.ndarray  # (r, h)
    tanh_b: np.ndarray  # (h,)


class Body(NamedTuple):
    net: Network
    mass: Moments  # with the vertex masses


class Vertices(NamedTuple):
    """The vertices a ground plane's contact acts on one by one: y_v = a_v + E_v g (float64), with the
    bounds that cull the far ones: |y_v| <= |a_v| + reach_v |g| <= radius + farthest |g|."""

    a: np.ndarray  # (n, 3)
    E: np.ndarray  # (n, 3, r)
    weight: np.ndarray  # (n,) kg
    reach: np.ndarray  # (n,) |E_v|_F
    radius: float  # max |a_v|
    farthest: float  # max reach_v


class Prepared(NamedTuple):
    """What the compiled loop needs of an object, whatever the rollout: computed once per object."""

    body: Body
    a: np.ndarray  # (V, 3) centred rest positions
    E: np.ndarray  # (V, 3, r) centred modes
    m: np.ndarray  # (V,) masses


class Pins(NamedTuple):
    """The pinned vertices, weighted by the share of the object's mass each holds (mechanics._pin_mass):
    their moments and the sums with their targets p_v that the pins' force and stiffness need, and the
    vertices themselves for their energy (from moments it would be a difference of sums of the object's
    size squared, whose round-off the step's discrete gradient turned into force: 7e-5 of the kinetic
    energy of a pinned toy)."""

    a: np.ndarray  # (N, 3)
    E: np.ndarray  # (N, 3, r)
    weight: np.ndarray  # (N,)
    targets: np.ndarray  # (N, 3) p_v
    moments: Moments
    target: np.ndarray  # (3,) sum w p
    a_target: np.ndarray  # (3, 3) sum w a p^T
    E_target: np.ndarray  # (3, 3, r) E_target[i, j] = sum w E_v[i] p_v[j]


class Loads(NamedTuple):
    """Point forces through their regions' weighted means (float64)."""

    a: np.ndarray  # (P, 3) sum_v w_pv a_v
    E: np.ndarray  # (P, 3, r) sum_v w_pv E_v
    force: np.ndarray  # (P, 3) N
    start: np.ndarray  # (P,) s
    end: np.ndarray  # (P,) s


def applies(shape) -> bool:
    """Whether `shape` is one object decoded by a surrogate on a floating frame: what body() takes."""
    return (
        isinstance(shape, FloatingShape)
        and shape.in_dims is None
        and isinstance(shape.latent.context, SurrogateContext)
    )


def as_float64(t: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 and C-contiguous: the compiled loop is specialised (and cached) for exactly that layout."""
    t = t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else t
    return np.ascontiguousarray(t, dtype=np.float64)


def centred(shape: FloatingShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a (V, 3), E (V, 3, r) about the centre of mass, and the masses m (V,)."""
    context: SurrogateContext = shape.latent.context
    m, rest, modes = (as_float64(t) for t in (shape.latent.masses, context.rest, context.modes))
    a = rest - m @ rest / m.sum()
    E = modes - np.einsum("v,vir->ir", m, modes) / m.sum()
    return a, E, m


def weighted(a: np.ndarray, E: np.ndarray, w: np.ndarray) -> Moments:
    """The moments of vertices a (N, 3), E (N, 3, r) with weights w (N,)."""
    N, _, r = E.shape
    flat = E.reshape(N, 3 * r)
    K = ((w[:, None] * flat).T @ flat).reshape(3, r, 3, r).transpose(0, 2, 1, 3)  # one BLAS product
    arrays = (
        w @ a,
        np.einsum("v,vir->ir", w, E),
        (w[:, None] * a).T @ a,
        np.einsum("vir,vj->ijr", w[:, None, None] * E, a),
        K,
        np.einsum("iirs->rs", K),
    )
    return Moments(float(w.sum()), *(as_float64(t) for t in arrays))


def body(shape: FloatingShape, a: np.ndarray, E: np.ndarray, m: np.ndarray) -> Body:
    """The network and the mass moments of `shape` from its centred modes (centred)."""
    context: SurrogateContext = shape.latent.context
    reduction, basis = as_float64(context.reduction), as_float64(shape.reduced.basis)
    net = context.net
    arrays = (
        reduction @ basis.T,
        (as_float64(shape.latent.mu_cond) - as_float64(context.mu_cond)) @ reduction.T,
        net.L,
        net.A,
        net.b,
        net.W,
        torch.tanh(net.b),
    )
    return Body(Network(*(as_float64(t) for t in arrays)), weighted(a, E, m))


def prepare(shape: FloatingShape) -> Prepared:
    """The body and the centred modes of `shape` (applies(shape) must hold): O(V r^2), once an object."""
    a, E, m = centred(shape)
    return Prepared(body(shape, a, E, m), a, E, m)


def pinned(a: np.ndarray, E: np.ndarray, m: np.ndarray, forcing: Forcing) -> Pins:
    """The pinned vertices of one rollout's forcing, each holding the object's mass by its pin weight
    (as mechanics._pin_mass)."""
    pin = as_float64(forcing.pin)
    held = np.flatnonzero(pin)
    w = pin[held] * m.sum() / max(pin.sum(), 1e-12)
    a, E, p = a[held], E[held], as_float64(forcing.pin_position)[held]
    arrays = (w @ p, (w[:, None] * a).T @ p, np.einsum("vir,vj->ijr", w[:, None, None] * E, p))
    target, a_target, E_target = (as_float64(t) for t in arrays)
    return Pins(
        *(as_float64(t) for t in (a, E, w, p)),
        weighted(a, E, w),
        target,
        a_target,
        E_target,
    )


def every_vertex(a: np.ndarray, E: np.ndarray, m: np.ndarray) -> Vertices:
    """All vertices with their masses: a ground plane's contact acts at each."""
    reach = np.sqrt((E**2).sum(axis=(1, 2)))
    radius = float(np.sqrt((a**2).sum(1)).max(initial=0.0))
    return Vertices(*(as_float64(t) for t in (a, E, m, reach)), radius, float(reach.max(initial=0.0)))


def loads(a: np.ndarray, E: np.ndarray, forcing: Forcing) -> Loads:
    w = as_float64(forcing.weights)
    arrays = (w @ a, np.einsum("pv,vir->pir", w, E), forcing.force, forcing.start, forcing.end)
    return Loads(*(as_float64(t) for t in arrays))
