"""Model reduction by the active-subspace method (research/neurok-paper.md s5.4, s9.2).

Per object: g(z) = |D(z) - rest|, the size of the decoded deformation; C = E[grad g grad g^T] over the
prior z ~ N(mu_cond, I) is estimated from samples; C = W Lambda W^T, and the simulation and IK run in q
with z(q) = mu_cond + A^T q, the rows of A taken from the leading columns of W (the latent directions
that change the deformation most).

Ours, the dimension: k_q is the fewest directions that keep the object's shapes, measured on the same
prior samples z_i by the share of the latent's decoded variation the subspace retains,

    retained(A) = 1 - E|x(z_i) - x(mu_cond + A^T A (z_i - mu_cond))|^2 / E|x(z_i) - x(mu_cond)|^2

(|.|^2 mass-weighted over the vertices), the smallest k_q with retained >= `retain`, capped at
`max_dims`. The paper's largest eigenvalue gap kept 1-3 directions for every object of a trained model,
too few for IK to reach a shape (issue 14: IK in q 0.40 Chamfer-L1 against 0.05 in z).

Ours, the inertia: a direction can change |D| yet barely move the vertices (G = J^T M J nearly singular
along it). Under the prior's restoring potential such a direction is a mode of almost no inertia,
oscillating orders of magnitude faster than the rest (measured on a `tiny` model: 1e4 rad/s against 50),
which no affordable time step resolves. So a direction is skipped, before it is counted, when adding it
would leave the subspace's metric at mu_cond with an eigenvalue below `min_inertia` of its largest: the
fastest mode is then at most 1/sqrt(min_inertia) times the slowest at rest, and the retained share is
measured on the directions actually kept (such a direction barely moves the vertices, so skipping it
costs little of the share). The kept rows are finally rotated to the eigenvectors of G at mu_cond, by
descending inertia; that changes no span and no retained share.

Cost per object, in decoder evaluations of all its vertices: `samples` forward and backward passes for C,
then `samples` per direction tried for the retained share, plus one Jacobian per `chunk_size` candidate
directions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import torch
from torch.func import vmap

from neurok.dynamics.config import ReductionConfig
from neurok.dynamics.mechanics import metric
from neurok.dynamics.shape import LatentShape, ReducedShape
from neurok.errors import ConfigError, NeurokError


@dataclass(frozen=True)
class ActiveSubspace(ReducedShape):
    """A ReducedShape that says how much of the latent's decoded variation its subspace keeps."""

    retained: torch.Tensor | None = None  # () or (B,): the retained share, 1 = every decoded shape kept


def prior_samples(shape: LatentShape, cfg: ReductionConfig) -> torch.Tensor:
    """cfg.samples draws z ~ N(mu_cond, I) (N, k) for one object, deterministic from cfg.seed."""
    mu = shape.mu_cond
    generator = torch.Generator(device=mu.device).manual_seed(cfg.seed)
    return mu + torch.randn(cfg.samples, mu.shape[0], generator=generator, dtype=mu.dtype, device=mu.device)


def gradient_covariance(
    shape: LatentShape, cfg: ReductionConfig, z: torch.Tensor | None = None
) -> torch.Tensor:
    """C = 1/N sum grad g grad g^T (k, k) for one object, at z (default: prior_samples)."""
    z = prior_samples(shape, cfg) if z is None else z
    grads = []
    # Plain autograd on a batch of decodes: the samples are independent, so the gradient of their sum
    # holds each sample's gradient (torch.func.grad would also import torch._dynamo: seconds per process).
    for chunk in z.split(cfg.chunk_size or len(z)):
        chunk = chunk.detach().requires_grad_()
        with torch.enable_grad():
            half_sq = 0.5 * (vmap(shape.decode)(chunk) - shape.rest).square().sum((-2, -1))
            (grad,) = torch.autograd.grad(half_sq.sum(), chunk)
        # grad |d| = grad(|d|^2 / 2) / |d|; the floor keeps a sample with no deformation at zero, not NaN.
        grads.append(grad / (2 * half_sq.detach()).sqrt().clamp_min(torch.finfo(z.dtype).tiny)[:, None])
    grads = torch.cat(grads)
    return grads.T @ grads / len(z)


def decode_all(shape: LatentShape, z: torch.Tensor, cfg: ReductionConfig) -> torch.Tensor:
    """Vertices (N, V, 3) of latents z (N, k), cfg.chunk_size decodes at a time."""
    with torch.no_grad():
        return torch.cat([vmap(shape.decode)(chunk) for chunk in z.split(cfg.chunk_size or len(z))])


class DecodedVariation:
    """The latent's decoded variation of one object over prior samples z_i, and the share of it a subspace
    retains (the module docstring's retained(A))."""

    def __init__(self, shape: LatentShape, z: torch.Tensor, cfg: ReductionConfig):
        self.shape, self.cfg = shape, cfg
        self.offsets = z - shape.mu_cond
        self.decoded = decode_all(shape, z, cfg)
        with torch.no_grad():
            self.total = self.error(shape.decode(shape.mu_cond))

    def error(self, x: torch.Tensor) -> torch.Tensor:
        """E_i sum_v m_v |decoded_iv - x_(i)v|^2 for x (V, 3) or (N, V, 3)."""
        return torch.einsum("nvc,v->", (self.decoded - x).square(), self.shape.masses) / len(self.decoded)

    def retained(self, basis: torch.Tensor) -> torch.Tensor:
        """The share of the variation kept by z = mu_cond + A^T A (z_i - mu_cond), A = basis (k_q, k)."""
        if self.total <= 0:  # a decoder that ignores z: no subspace loses anything
            return self.total.new_ones(())
        projected = self.shape.mu_cond + (self.offsets @ basis.T) @ basis
        return 1 - self.error(decode_all(self.shape, projected, self.cfg)) / self.total


def jacobian_along(shape: LatentShape, directions: torch.Tensor) -> torch.Tensor:
    """dx/dz at mu_cond along the rows of directions (m, k): (V, 3, m)."""
    reduced = ReducedShape(shape, directions)
    return reduced.jacobian_fn(reduced.tensors)(directions.new_zeros(directions.shape[0]))[1]


class Step(NamedTuple):
    """The subspace after one more direction: A (k_q, k), dx/dq at mu_cond (V, 3, k_q), retained share."""

    basis: torch.Tensor
    jacobian: torch.Tensor
    retained: torch.Tensor

    @property
    def dims(self) -> int:
        return self.basis.shape[0]


def without_light_modes(
    basis: torch.Tensor, jacobian: torch.Tensor, masses: torch.Tensor, min_inertia: float, floor: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """basis (n, k) and its dx/dq (V, 3, n), less the eigen-directions of G = J^T M J whose inertia is
    below min_inertia of the largest or below `floor` (the rest rotated to G's eigenvectors); unchanged
    when none is."""
    if min_inertia <= 0 and floor <= 0:
        return basis, jacobian
    inertia, rotation = torch.linalg.eigh(metric(jacobian, masses))
    heavy = inertia >= max(min_inertia * inertia[-1].item(), floor)
    if heavy.all():
        return basis, jacobian
    rotation = rotation[:, heavy]
    return rotation.T @ basis, jacobian @ rotation


def growing_subspace(
    shape: LatentShape, candidates: torch.Tensor, variation: DecodedVariation, cfg: ReductionConfig
) -> Iterator[Step]:
    """The subspace grown from candidates (k, k), orthonormal rows in order of preference; a step each
    time it changes. Each candidate joins, then whatever light mode it leaves is dropped: a
    light candidate is dropped at once, a light direction met early gives way to a heavy one met later.
    The span stays within the candidates met, so the next candidate is orthogonal to it."""
    min_inertia = cfg.min_inertia if cfg.dims is None else 0.0  # a fixed k_q takes the leading directions
    basis, jacobian = candidates[:0], shape.rest.new_zeros(*shape.rest.shape, 0)
    for block in candidates.split(cfg.chunk_size or len(candidates)):
        for row, column in zip(block, jacobian_along(shape, block).unbind(-1), strict=True):
            before = basis
            basis, jacobian = without_light_modes(
                torch.cat([basis, row[None]]),
                torch.cat([jacobian, column[..., None]], -1),
                shape.masses,
                min_inertia,
            )
            if not same_span(basis, before):  # a dropped candidate changes nothing: no decodes
                yield Step(basis, jacobian, variation.retained(basis))


def same_span(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether orthonormal rows a (n, k) and b (m, k) span one subspace (up to rounding)."""
    return a.shape == b.shape and bool((a @ b.T).square().sum() >= a.shape[0] * (1 - 1e-3))


def grow_until(steps: Iterator[Step], done: Callable[[Step], bool], required: str = "") -> Step:
    """The first step that is `done`. When the candidates run out first: the last step, or an error when
    `required` names a dimension that must be reached."""
    step = None
    for step in steps:
        if done(step):
            return step
    if step is None or required:
        raise NeurokError(
            f"reduction: too few latent directions pass reduction.min_inertia to reach {required or 'one'}; "
            "lower reduction.min_inertia"
        )
    return step


def keeps_the_shapes(step: Step, cfg: ReductionConfig, cap: int) -> bool:
    """Enough directions: the retained share reached cfg.retain (and min_dims), or the cap is reached."""
    return step.dims >= cap or (step.dims >= cfg.min_dims and bool(step.retained >= cfg.retain))


def heavy_directions(shape: ReducedShape, min_inertia: float, min_motion: float = 0.0) -> ReducedShape:
    """The directions of one object's reduced space that carry inertia at rest, for the simulator: those
    of G's eigen-directions at q = 0 with at least min_inertia of the largest inertia (the module
    docstring's light modes: IK may use them, no affordable time step resolves them), and that move the
    vertices by at least min_motion of the object's radius of gyration (RMS) per prior deviation: a
    direction the decoder barely moves is float noise to the steps, and no restoring force or wall holds
    a coordinate of no inertia (a weak model's q wandered hundreds of deviations out). None may be left:
    the object is then rigid."""
    J = shape.jacobian_fn(shape.tensors)(shape.basis.new_zeros(shape.dims))[1]
    masses, rest = shape.latent.masses, shape.latent.rest
    centre = masses @ rest / masses.sum()
    gyration = masses @ (rest - centre).square().sum(-1)  # M r_g^2
    basis, _ = without_light_modes(shape.basis, J, masses, min_inertia, min_motion**2 * float(gyration))
    return ReducedShape(shape.latent, basis)


def by_inertia(step: Step, masses: torch.Tensor) -> torch.Tensor:
    """The step's basis rotated to the eigenvectors of G at q = 0, by descending inertia (same span)."""
    _, rotation = torch.linalg.eigh(metric(step.jacobian, masses))
    return rotation.flip(-1).T @ step.basis


def check(cfg: ReductionConfig, k: int) -> None:
    if cfg.dims is not None and not 1 <= cfg.dims <= k:
        raise ConfigError(f"reduction.dims must be in 1..{k} (the latent size), got {cfg.dims}")
    if not 1 <= cfg.min_dims <= min(cfg.max_dims, k):
        raise ConfigError(
            f"reduction: need 1 <= min_dims <= min(max_dims, k) = {min(cfg.max_dims, k)}, got {cfg.min_dims}"
        )
    if not 0 < cfg.retain <= 1:
        raise ConfigError(f"reduction.retain must be in (0, 1], got {cfg.retain}")


def active_subspace(shape: LatentShape, cfg: ReductionConfig) -> ActiveSubspace:
    """The reduced shape of one object, or of a stack of objects; a stack shares the largest k_q chosen
    for its objects, so it can be simulated as one batch."""
    check(cfg, shape.latent_dims)
    objects = [shape] if shape.batch_size is None else [shape[i] for i in range(shape.batch_size)]
    cap = min(cfg.max_dims, shape.latent_dims)
    spectra, growths = [], []
    with torch.no_grad():
        for o in objects:
            z = prior_samples(o, cfg)
            eigenvalues, eigenvectors = torch.linalg.eigh(gradient_covariance(o, cfg, z))
            spectra.append(eigenvalues.flip(-1))  # descending
            growths.append(growing_subspace(o, eigenvectors.flip(-1).T, DecodedVariation(o, z, cfg), cfg))
        if cfg.dims is None:
            steps = [grow_until(g, partial(keeps_the_shapes, cfg=cfg, cap=cap)) for g in growths]
        else:
            steps = [
                grow_until(g, lambda s: s.dims == cfg.dims, f"reduction.dims={cfg.dims}") for g in growths
            ]
        dims = max(s.dims for s in steps)
        steps = [
            s if s.dims == dims else grow_until(g, lambda s: s.dims == dims, f"the stack's k_q={dims}")
            for s, g in zip(steps, growths, strict=True)
        ]
        basis = torch.stack([by_inertia(s, o.masses) for s, o in zip(steps, objects, strict=True)])
    retained, eigenvalues = torch.stack([s.retained for s in steps]), torch.stack(spectra)
    if shape.batch_size is None:
        return ActiveSubspace(shape, basis[0], eigenvalues[0], retained[0])
    return ActiveSubspace(shape, basis, eigenvalues, retained)
