"""Model reduction by the active-subspace method (research/neurok-paper.md s5.4, s9.2).

Per object: g(z) = |D(z) - rest|, the size of the decoded deformation; C = E[grad g grad g^T] over the
prior z ~ N(mu_cond, I) is estimated from samples; C = W Lambda W^T, A = W[:, :k_q]^T, and the
simulation and IK run in q with z(q) = mu_cond + A^T q. The rows of A are the latent directions that
change the deformation most.

Ours: a direction can change |D| yet barely move the vertices (G = J^T M J nearly singular along it).
Under the prior's restoring potential such a direction is a mode of almost no inertia, oscillating
orders of magnitude faster than the rest (measured on a `tiny` model: 1e4 rad/s against 50), which no
affordable time step resolves. So A is rotated to the eigenvectors of G at mu_cond, and the directions
with less than `min_inertia` of the largest inertia are dropped: the fastest kept mode is then at most
1/sqrt(min_inertia) times the slowest.
"""

from __future__ import annotations

import torch
from torch.func import vmap

from neurok.dynamics.config import ReductionConfig
from neurok.dynamics.mechanics import metric
from neurok.dynamics.shape import LatentShape, ReducedShape
from neurok.errors import ConfigError


def gradient_covariance(shape: LatentShape, cfg: ReductionConfig) -> torch.Tensor:
    """C = 1/N sum grad g grad g^T (k, k) for one object, deterministic from cfg.seed."""
    mu = shape.mu_cond
    generator = torch.Generator(device=mu.device).manual_seed(cfg.seed)
    z = mu + torch.randn(cfg.samples, mu.shape[0], generator=generator, dtype=mu.dtype, device=mu.device)
    grads = []
    # Plain autograd on a batch of decodes: the samples are independent, so the gradient of their sum
    # holds each sample's gradient (torch.func.grad would also import torch._dynamo: seconds per process).
    for chunk in z.split(cfg.chunk_size or len(z)):
        chunk = chunk.detach().requires_grad_()
        with torch.enable_grad():
            half_sq = 0.5 * (vmap(shape.decode)(chunk) - shape.rest).square().sum((-2, -1))
            (grad,) = torch.autograd.grad(half_sq.sum(), chunk)
        # grad |d| = grad(|d|^2 / 2) / |d|; the floor keeps a sample with no deformation at zero, not NaN.
        grads.append(grad / (2 * half_sq.detach()).sqrt().clamp_min(torch.finfo(mu.dtype).tiny)[:, None])
    grads = torch.cat(grads)
    return grads.T @ grads / cfg.samples


def choose_dims(eigenvalues: torch.Tensor, cfg: ReductionConfig) -> int:
    """k_q at the largest gap of log eigenvalues (descending), between cfg.min_dims and cfg.max_dims."""
    k = eigenvalues.shape[0]
    if cfg.dims is not None:
        if not 1 <= cfg.dims <= k:
            raise ConfigError(f"reduction.dims must be in 1..{k} (the latent size), got {cfg.dims}")
        return cfg.dims
    top = min(cfg.max_dims, k - 1)
    if not 1 <= cfg.min_dims <= top:
        raise ConfigError(
            f"reduction: need 1 <= min_dims <= min(max_dims, k - 1) = {top}, got {cfg.min_dims}"
        )
    log = eigenvalues.clamp_min(eigenvalues[0] * torch.finfo(eigenvalues.dtype).eps).log()
    gaps = log[:-1] - log[1:]  # gaps[i]: between the (i+1)-th and (i+2)-th largest
    return cfg.min_dims + int(gaps[cfg.min_dims - 1 : top].argmax())


def by_inertia(shape: LatentShape, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of `basis` (k_q, k) rotated to the eigenvectors of G at q = 0, by descending inertia;
    and those eigenvalues (k_q,)."""
    reduced = ReducedShape(shape, basis)
    G = metric(reduced.jacobian_fn(reduced.tensors)(basis.new_zeros(basis.shape[0]))[1], shape.masses)
    inertia, rotation = torch.linalg.eigh(G)
    return rotation.flip(-1).T @ basis, inertia.flip(-1)


def active_subspace(shape: LatentShape, cfg: ReductionConfig) -> ReducedShape:
    """The reduced shape of one object, or of a stack of objects; a stack shares the largest k_q chosen
    for its objects, so it can be simulated as one batch."""
    objects = [shape] if shape.batch_size is None else [shape[i] for i in range(shape.batch_size)]
    with torch.no_grad():
        eigenvalues, eigenvectors = zip(
            *(torch.linalg.eigh(gradient_covariance(o, cfg)) for o in objects), strict=True
        )
    eigenvalues = torch.stack(eigenvalues).flip(-1)  # descending
    eigenvectors = torch.stack(eigenvectors).flip(-1)
    dims = max(choose_dims(lam, cfg) for lam in eigenvalues)
    basis = eigenvectors[..., :dims].transpose(-1, -2)  # A: rows are the leading eigenvectors
    if cfg.dims is None and cfg.min_inertia > 0:
        with torch.no_grad():
            basis, inertia = (torch.stack(t) for t in zip(*map(by_inertia, objects, basis), strict=True))
        heavy = (inertia >= cfg.min_inertia * inertia[:, :1]).sum(-1)
        basis = basis[:, : max(cfg.min_dims, int(heavy.max()))]
    if shape.batch_size is None:
        return ReducedShape(shape, basis[0], eigenvalues[0])
    return ReducedShape(shape, basis, eigenvalues)
