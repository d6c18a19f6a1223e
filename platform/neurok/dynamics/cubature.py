"""Cubature: the simulator's steps on a few weighted points of an object instead of all its vertices.

Every mass-weighted term of the Lagrangian is a sum over vertices: the metric, gravity, drag, and for a
floating frame its mass, centre of mass and inertia. A cubature is a small set of points with weights
w >= 0 whose sums reproduce those of all the vertices (with their masses m) over the shapes a rollout
visits (An et al. 2008, "Optimizing cubature for efficient integration of subspace deformations"; CROM
evaluates its network only there). It is fitted once per object on the floating frame's metric

    G(q) = sum_v m_v F_v(q)^T F_v(q),   F_v = [I, -hat(x_v(q)), J_v(q)]   (3 x (6 + k_q))

at sampled q: its blocks are the mass, the first and second moments of the vertices (centre of mass,
inertia) and the deformation's metric, so matching them keeps free fall, rotation and the deformation's
inertia. Each entry of G at each sample is one equation in w, scaled by sqrt(G_aa G_bb); w comes from
non-negative least squares (scipy's active-set NNLS), which is sparse by nature: at most as many
non-zero weights as equations, and cfg.max_points of them at most (the heaviest, re-fitted).

Vertices that forces or pins act on are stepped too, with no cubature weight (forces are not
mass-weighted; pins share the whole mass by pin weight: mechanics._pin_mass). All vertices are decoded
only at output frames. A ground plane is penalty contact at every vertex, which a few points would let
sink through: a scene with one steps all vertices (simulated_body).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch.func import vmap

from neurok.dynamics.config import CubatureConfig
from neurok.dynamics.rigid import RIGID, hat
from neurok.dynamics.shape import ReducedShape
from neurok.errors import NeurokError


@dataclass(frozen=True)
class Cubature:
    points: torch.Tensor  # (n,) int64 vertex indices
    weights: torch.Tensor  # (n,) kg
    metric_error: float  # held-out |G_w - G| / |G| (Frobenius), over the held-out samples
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {"points": float(len(self.points)), "metric_error": self.metric_error, "seconds": self.seconds}

    def stepped(self, acted_on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vertices a rollout steps (n',) and their masses: the cubature's points with their weights,
        then every other vertex a force or pin acts on (acted_on (V,) bool) with none (module docstring)."""
        extra = acted_on.clone()
        extra[self.points] = False
        extra = extra.nonzero().flatten().to(self.points.device)
        return torch.cat([self.points, extra]), torch.cat([self.weights, self.weights.new_zeros(len(extra))])


def frame_rows(x: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """F_v = [I, -hat(x_v), J_v] (V, 3, 6 + k_q): the floating frame's Jacobian at c = 0, theta = 0."""
    eye = torch.eye(3, dtype=x.dtype, device=x.device).expand(x.shape[0], 3, 3)
    return torch.cat([eye, -hat(x), J], dim=-1)


def metric_terms(shape: ReducedShape, q: torch.Tensor) -> torch.Tensor:
    """(N, V, E) each vertex's unweighted contribution to the upper triangle of G at each q (N, k_q)."""
    x, J = vmap(shape.jacobian_fn(shape.tensors))(q)
    F = vmap(frame_rows)(x, J)
    rows, cols = torch.triu_indices(F.shape[-1], F.shape[-1])
    return torch.einsum("nvia,nvib->nvab", F, F)[..., rows, cols]


def fit_cubature(shape: ReducedShape, cfg: CubatureConfig) -> Cubature:
    """The cubature of one object's reduced shape (module docstring), checked on held-out samples."""
    if shape.batch_size is not None:
        raise NeurokError("fit_cubature fits one object; fit a stack's objects one at a time")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(cfg.seed)
    masses = shape.latent.masses
    V = masses.shape[0]
    candidates = (
        torch.arange(V)
        if cfg.candidates >= V
        else torch.randperm(V, generator=generator)[: cfg.candidates].sort().values
    )
    u = torch.randn(cfg.samples + cfg.held_out, shape.dims, generator=generator, dtype=masses.dtype)
    q = u * torch.rand(len(u), 1, generator=generator, dtype=masses.dtype) * cfg.spread
    q[0] = 0  # every rollout starts at rest
    with torch.no_grad():
        terms = metric_terms(shape, q.to(masses.device)).double().cpu()  # (N, V, E)
    full = torch.einsum("v,nve->ne", masses.double().cpu(), terms)  # (N, E)
    k = RIGID + shape.dims
    rows, cols = torch.triu_indices(k, k)
    diagonal = full[:, rows == cols]  # (N, k), in upper-triangle order of the diagonal entries
    scale = (diagonal[:, rows] * diagonal[:, cols]).clamp_min(1e-30).sqrt()
    fitted, held = slice(0, cfg.samples), slice(cfg.samples, None)
    A = (terms[fitted][:, candidates] / scale[fitted, None]).permute(0, 2, 1).flatten(0, 1)  # (N E, C)
    b = (full[fitted] / scale[fitted]).flatten()
    weights = _nnls(A.numpy(), b.numpy())
    chosen = np.flatnonzero(weights)
    if len(chosen) > cfg.max_points:
        chosen = np.sort(chosen[np.argsort(weights[chosen])[-cfg.max_points :]])
        weights = np.zeros_like(weights)
        weights[chosen] = _nnls(A.numpy()[:, chosen], b.numpy())
        chosen = chosen[weights[chosen] > 0]
    points = candidates[torch.from_numpy(chosen)]
    w = torch.from_numpy(weights[chosen])
    approx = torch.einsum("c,nce->ne", w, terms[held][:, points])
    error = float((approx - full[held]).norm() / full[held].norm())
    return Cubature(
        points.to(masses.device), w.to(masses.dtype).to(masses.device), error, time.perf_counter() - start
    )


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    weights, _ = scipy.optimize.nnls(A, b, maxiter=20 * A.shape[1])
    return weights
