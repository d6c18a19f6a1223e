"""An object's decoder replaced, for the simulator, by a small function of its reduced coordinates.

A step of the latent simulator evaluates the decoder and its k_q tangents at every step, and the
decoder's transformer work (attention over the latent and shape tokens at every query point) does not
depend on how many vertices follow it: it dominates a step whatever the mesh (issue 16). An object's
simulated motions live in a space of k_q <= 16 coordinates, so the map q -> x(q) is fitted once, when
the object is prepared, by something whose cost is a few small matrix products:

    x(q) ~ x(0) + B g(q),   g(q) = L q + N(q) - N(0)

B (V, 3, r) is an orthonormal basis of the decoded displacements and of the decoder's tangent
directions, sampled over the region a rollout visits: q = s u, u ~ N(0, I), s uniform in [0, spread]
(the prior is N(0, I) in q). g is a linear map plus a one-layer tanh network (smooth, so the implicit
step's Newton iteration sees a smooth metric), fitted to the samples' coefficients B^T (x - x(0)) and to
their derivatives B^T J (the metric J^T M J comes from the derivatives, so they are fitted too, not
only the positions). g(0) = 0 exactly: the rest state is still the input mesh.

The fit is checked against the decoder on samples it did not see; `prepare` keeps the decoder, and says
why, where the surrogate is off by more than cfg.tolerance of the object's size.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.func import vmap

from neurok.dynamics.config import SurrogateConfig
from neurok.dynamics.shape import LatentShape, ReducedShape
from neurok.errors import NeurokError

log = logging.getLogger(__name__)


class Network(NamedTuple):
    """g(q) = L q + W (tanh(A q + b) - tanh(b)), for one object: g(0) = 0."""

    L: torch.Tensor  # (r, k_q)
    A: torch.Tensor  # (h, k_q)
    b: torch.Tensor  # (h,)
    W: torch.Tensor  # (r, h)


def coefficients(net: Network, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g(q) (..., r) and dg/dq (..., r, k_q), the derivative by hand (cheaper than autodiff)."""
    h = torch.tanh(q @ net.A.mT + net.b)
    slope = (1 - h.square()).unsqueeze(-1) * net.A  # (..., h, k_q)
    return q @ net.L.mT + (h - torch.tanh(net.b)) @ net.W.mT, net.L + net.W @ slope


class SurrogateContext(NamedTuple):
    """The decode_fn context of a surrogate (a pytree of tensors: stackable and vmap-able)."""

    mu_cond: torch.Tensor  # (k,) the reduced shape's origin in z
    reduction: torch.Tensor  # (k_q, k) A: q = A (z - mu_cond)
    net: Network
    modes: torch.Tensor  # (V, 3, r) B
    rest: torch.Tensor  # (V, 3) x(0)


def on_vertices(shape: ReducedShape, vertices: torch.Tensor, masses: torch.Tensor) -> ReducedShape:
    """A surrogate's reduced shape restricted to some of its vertices (V',), which get `masses` (V',)."""
    context = shape.latent.context
    if not isinstance(context, SurrogateContext):
        raise NeurokError("only a surrogate's shape can be restricted to some of its vertices")
    latent = shape.latent
    restricted = context._replace(modes=context.modes[vertices], rest=context.rest[vertices])
    return ReducedShape(
        LatentShape(latent.decode_fn, restricted, latent.mu_cond, masses, latent.rest[vertices]), shape.basis
    )


class SurrogateDecoder:
    """decode_fn of a surrogate's LatentShape. One instance for all surrogates: their shapes stack."""

    def __call__(self, z: torch.Tensor, context: SurrogateContext) -> torch.Tensor:
        g, _ = coefficients(context.net, (z - context.mu_cond) @ context.reduction.mT)
        return context.rest + context.modes @ g

    def linearize(
        self, z: torch.Tensor, directions: torch.Tensor, context: SurrogateContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (V, 3) and its derivatives along the rows of directions (k_d, k): (V, 3, k_d)."""
        g, dg = coefficients(context.net, (z - context.mu_cond) @ context.reduction.mT)
        along = dg @ (context.reduction @ directions.mT)  # (r, k_d)
        return context.rest + context.modes @ g, context.modes @ along


SURROGATE = SurrogateDecoder()


@dataclass(frozen=True)
class SurrogateFit:
    """How a surrogate was fitted and how far it is from the decoder on held-out samples."""

    modes: int  # r
    samples: int  # decoder evaluations fitted (positions; a quarter of them with Jacobians)
    position_error: float  # largest held-out RMS vertex error, as a share of the object's size
    jacobian_error: float  # held-out |J_s - J| / |J| (Frobenius, over all held-out samples)
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {
            "modes": float(self.modes),
            "samples": float(self.samples),
            "position_error": self.position_error,
            "jacobian_error": self.jacobian_error,
            "seconds": self.seconds,
        }


class Samples(NamedTuple):
    q: torch.Tensor  # (N, k_q)
    x: torch.Tensor  # (N, V, 3)
    jacobian_q: torch.Tensor  # (N_J, k_q)
    J: torch.Tensor  # (N_J, V, 3, k_q)


def decoder_samples(shape: ReducedShape, n: int, cfg: SurrogateConfig, generator: torch.Generator) -> Samples:
    """n positions and n // 4 Jacobians of the decoder over the sampled region (the first Jacobian at
    q = 0, where every rollout starts)."""
    dtype, device = shape.basis.dtype, shape.basis.device
    u = torch.randn(n, shape.dims, generator=generator, dtype=dtype)
    q = (u * torch.rand(n, 1, generator=generator, dtype=dtype) * cfg.spread).to(device)
    q_j = torch.cat([q.new_zeros(1, shape.dims), q[1 : max(n // 4, 1)]])
    tensors = shape.tensors
    x = vmap(shape.position_fn(tensors), chunk_size=cfg.chunk_size)(q)
    _, J = vmap(shape.jacobian_fn(tensors), chunk_size=cfg.chunk_size)(q_j)
    return Samples(q, x, q_j, J)


def displacement_basis(samples: Samples, rest: torch.Tensor, cfg: SurrogateConfig) -> torch.Tensor:
    """(V, 3, r) orthonormal modes spanning the sampled displacements and tangents up to cfg.retain of
    their squared norm (the tangents scaled to the displacements' size, so neither set dominates)."""
    d = (samples.x - rest).flatten(1)
    tangents = samples.J.movedim(-1, 1).flatten(2).flatten(0, 1)
    scale = d.norm() / tangents.norm().clamp_min(torch.finfo(d.dtype).tiny)
    rows = torch.cat([d, tangents * scale])
    gram = rows @ rows.mT  # rows x rows: cheaper than an SVD of rows x 3V
    eigenvalues, vectors = torch.linalg.eigh(gram.double())
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
    share = eigenvalues.cumsum(0) / eigenvalues.sum().clamp_min(torch.finfo(torch.float64).tiny)
    r = min(int((share < cfg.retain).sum()) + 1, cfg.max_modes, int((eigenvalues > 0).sum()))
    modes = rows.mT @ (vectors[:, :r] / eigenvalues[:r].sqrt()).to(rows.dtype)  # (3V, r), orthonormal
    modes, _ = torch.linalg.qr(modes)  # re-orthonormalised in the working precision
    return modes.view(*rest.shape, r)


def fit_network(
    q: torch.Tensor,
    c: torch.Tensor,
    q_j: torch.Tensor,
    dc: torch.Tensor,
    cfg: SurrogateConfig,
    generator: torch.Generator,
) -> Network:
    """g fitted to coefficients c (N, r) at q (N, k_q) and derivatives dc (N_J, r, k_q) at q_j, on the
    mean squared error of both, each relative to its own scale, in float64.

    The hidden layer is fixed at random (A ~ N(0, 1/spread^2), b ~ U(-1.5, 1.5)), so g is linear in
    [L, W] and fitted exactly, by ridge least squares (a random-feature model): deterministic, and under
    a second. Adam on every weight did worse: from a random start 1500 steps (8 s) left 2-4x the error
    of this fit on the toy decoders, and from this fit it found nothing better in 200-1000 steps."""
    q, c, q_j, dc = (t.double() for t in (q, c, q_j, dc))
    k = q.shape[-1]
    h = min(cfg.hidden, (len(q) + len(q_j) * k) // 2)  # at least twice the equations of unknowns
    A = torch.randn(h, k, generator=generator, dtype=torch.float64) / cfg.spread
    b = (2 * torch.rand(h, generator=generator, dtype=torch.float64) - 1) * 1.5
    c_scale, dc_scale = c.square().mean().sqrt().clamp_min(1e-30), dc.square().mean().sqrt().clamp_min(1e-30)
    # g is linear in [L, W]: its design rows are g and dg/dq of the network whose [L, W] is the identity
    eye = torch.eye(k + h, dtype=torch.float64)
    unit = Network(eye[:, :k], A, b, eye[:, k:])
    values, slopes = coefficients(unit, q)[0], coefficients(unit, q_j)[1].mT.flatten(0, 1)
    X = torch.cat([values / c_scale, slopes / dc_scale])
    Y = torch.cat([c / c_scale, dc.mT.flatten(0, 1) / dc_scale])
    gram = X.mT @ X
    # the ridge is on W alone: tanh features that are nearly linear over the samples would otherwise
    # cancel q's columns with large, opposite weights that float32 cannot carry
    ridge = cfg.ridge * gram.diagonal().mean() * (torch.arange(len(gram)) >= k).to(gram.dtype)
    gram += torch.diag(ridge)
    linear = torch.linalg.solve(gram, X.mT @ Y).mT  # (r, k + h)
    return Network(linear[:, :k], A, b, linear[:, k:])


def rigid_surrogate(shape: ReducedShape) -> ReducedShape:
    """The surrogate of a shape with no deformation coordinates (k_q = 0): x = x(0), without a decode."""
    latent, empty = shape.latent, shape.basis.new_zeros(0, 0)
    with torch.no_grad():
        rest = shape.position_fn(shape.tensors)(shape.basis.new_zeros(0))
    context = SurrogateContext(
        latent.mu_cond,
        shape.basis,
        Network(empty, empty, empty.new_zeros(0), empty),
        rest.new_zeros(*rest.shape, 0),
        rest,
    )
    return ReducedShape(
        LatentShape(SURROGATE, context, latent.mu_cond, latent.masses, latent.rest), shape.basis
    )


def surrogate_shape(shape: ReducedShape, cfg: SurrogateConfig) -> tuple[ReducedShape, SurrogateFit]:
    """The surrogate of one object's reduced shape (same q, same masses and rest mesh), with its fit."""
    if shape.batch_size is not None:
        raise NeurokError("surrogate_shape fits one object; fit a stack's objects one at a time")
    start = time.perf_counter()
    if shape.dims == 0:
        return rigid_surrogate(shape), SurrogateFit(0, 0, 0.0, 0.0, time.perf_counter() - start)
    generator = torch.Generator().manual_seed(cfg.seed)
    held_out = max(cfg.samples // 8, 2)
    with torch.no_grad():
        samples = decoder_samples(shape, cfg.samples + held_out, cfg, generator)
        rest = shape.position_fn(shape.tensors)(shape.basis.new_zeros(shape.dims))
        train = Samples(samples.q[:-held_out], samples.x[:-held_out], *samples[2:])
        modes = displacement_basis(train, rest, cfg)
        flat = modes.flatten(0, 1)  # (3V, r)
        c = (train.x - rest).flatten(1) @ flat
        dc = flat.mT @ train.J.flatten(1, 2)
    net = fit_network(train.q, c, train.jacobian_q, dc, cfg, generator)
    dtype = shape.basis.dtype
    latent = shape.latent
    context = SurrogateContext(latent.mu_cond, shape.basis, Network(*(p.to(dtype) for p in net)), modes, rest)
    fitted = ReducedShape(
        LatentShape(SURROGATE, context, latent.mu_cond, latent.masses, latent.rest), shape.basis
    )
    with torch.no_grad():
        q, x = samples.q[-held_out:], samples.x[-held_out:]
        _, J = vmap(shape.jacobian_fn(shape.tensors), chunk_size=cfg.chunk_size)(q)
        x_s, J_s = vmap(fitted.jacobian_fn(fitted.tensors))(q)
    size = (latent.rest.amax(0) - latent.rest.amin(0)).norm()
    position = ((x_s - x).square().sum(-1).mean(-1).sqrt() / size).amax()
    jacobian = (J_s - J).norm() / J.norm().clamp_min(torch.finfo(J.dtype).tiny)
    return fitted, SurrogateFit(
        modes.shape[-1], cfg.samples, float(position), float(jacobian), time.perf_counter() - start
    )


def prepare(shape: ReducedShape, cfg: SurrogateConfig) -> tuple[ReducedShape, dict[str, Any]]:
    """The shape the simulator steps: the surrogate when cfg.enabled and it is within cfg.tolerance of
    the decoder, else the decoder itself (logged). The record says which ran, and why."""
    if not cfg.enabled:
        return shape, {"decoder": "full", "reason": "dynamics.surrogate.enabled is off"}
    fitted, fit = surrogate_shape(shape, cfg)
    record = {"decoder": "surrogate"} | fit.as_dict()
    if not fit.position_error <= cfg.tolerance:
        reason = (
            f"the surrogate's held-out error {fit.position_error:.3g} of the object's size exceeds "
            f"dynamics.surrogate.tolerance = {cfg.tolerance:g}; simulating with the decoder itself (slower)"
        )
        log.warning("%s", reason)
        return shape, record | {"decoder": "full", "reason": reason}
    return fitted, record
