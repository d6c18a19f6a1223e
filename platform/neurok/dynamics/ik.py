"""Inverse kinematics (research/neurok-paper.md s6, s9.2): the latent whose decoded shape best fits an
observed point cloud, without correspondence.

    min_q  Chamfer(x(q), P) + lambda/2 |q|^2                  one cloud (fit)
    min_qt Chamfer(x(q_t), P_t) + lambda/2 |q_t|^2
           + s |q_t - (2 q_{t-1} - q_{t-2})|^2                  a sequence, frame by frame (track)

Tracking warm-starts each frame at the constant-velocity prediction, which the smoothness term also
pulls towards (it penalises latent acceleration, so steady motion is not dragged back).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from neurok.dynamics.config import IKConfig, Optimizer, Space
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.shape import ReducedShape
from neurok.geometry import chamfer_distance


@dataclass
class IKResult:
    q: torch.Tensor  # (B, k_q) or (B, T, k_q): the fitted coordinates (z - mu_cond when fitting in z)
    z: torch.Tensor  # (B, k) or (B, T, k): the latents
    vertices: torch.Tensor  # (B, V, 3) or (B, T, V, 3)
    chamfer: torch.Tensor  # (B,) or (B, T): final Chamfer distance (cfg.loss) to the observed points


def _coordinates(shape: ReducedShape, cfg: IKConfig) -> ReducedShape | FloatingShape:
    space = Space(cfg.space)
    if space in (Space.z, Space.frame_z):
        shape = ReducedShape.identity(shape.latent)
    return FloatingShape(shape) if space in (Space.frame, Space.frame_z) else shape


def _optimise(
    shape: ReducedShape | FloatingShape,
    points: torch.Tensor,
    cfg: IKConfig,
    init: torch.Tensor,
    iterations: int,
    anchor: torch.Tensor | None = None,
) -> torch.Tensor:
    q = init.detach().clone().requires_grad_(True)
    rest, elastic = shape.start(len(init)), shape.elastic  # the prior acts on the deformation alone

    def loss() -> torch.Tensor:
        value = chamfer_distance(shape.positions(q), points, cfg.loss)
        value = value + 0.5 * cfg.prior_weight * (elastic * (q - rest)).square().sum(-1)
        if anchor is not None:
            value = value + cfg.smoothness * (q - anchor).square().sum(-1)
        return value.sum()

    def closure() -> torch.Tensor:
        value = loss()
        # autograd.grad (not backward) leaves the decoder's parameter gradients alone
        (q.grad,) = torch.autograd.grad(value, q)
        return value

    if cfg.optimizer == Optimizer.adam:
        # Items are independent and Adam acts per coordinate, so one Adam on the sum is one per item.
        # The step decays to zero (cosine): Chamfer L1 has a kink at its minimum, where a constant step
        # would keep hopping about.
        opt = torch.optim.Adam([q], lr=cfg.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        for _ in range(iterations):
            closure()
            opt.step()
            schedule.step()
    else:  # one L-BFGS over the batch: its line search is shared by the items
        torch.optim.LBFGS([q], lr=cfg.lr, max_iter=iterations, line_search_fn="strong_wolfe").step(closure)
    return q.detach()


def _result(
    shape: ReducedShape | FloatingShape, q: torch.Tensor, points: torch.Tensor, cfg: IKConfig
) -> IKResult:
    """The decoded fit of q (B, k_q) or (B, T, k_q) and its Chamfer distance to points (B, [T,] N, 3)."""
    with torch.no_grad():
        x = (
            shape.positions(q)
            if q.dim() == 2
            else torch.stack([shape.positions(qt) for qt in q.unbind(1)], 1)
        )
        return IKResult(q, shape.latents(q), x, chamfer_distance(x, points, cfg.loss))


def fit(
    shape: ReducedShape, points: torch.Tensor, cfg: IKConfig, init: torch.Tensor | None = None
) -> IKResult:
    """Fit observed clouds (B, N, 3), each to `shape` (one object) or to its own object of a stack of B.

    Starts from the rest state q = 0 (the prior mean) unless `init` (B, k_q) is given.
    """
    shape = _coordinates(shape, cfg)
    if init is None:
        init = shape.start(points.shape[0]).to(points.dtype)
    return _result(shape, _optimise(shape, points, cfg, init, cfg.iterations), points, cfg)


def track(shape: ReducedShape, sequence: torch.Tensor, cfg: IKConfig) -> IKResult:
    """Fit observed sequences (B, T, N, 3) frame by frame, with temporal smoothness."""
    shape = _coordinates(shape, cfg)
    start = shape.start(sequence.shape[0]).to(sequence.dtype)
    frames = [_optimise(shape, sequence[:, 0], cfg, start, cfg.iterations)]
    for t in range(1, sequence.shape[1]):
        predicted = frames[-1] if t == 1 else 2 * frames[-1] - frames[-2]
        frames.append(
            _optimise(shape, sequence[:, t], cfg, predicted, cfg.track_iterations, anchor=predicted)
        )
    return _result(shape, torch.stack(frames, dim=1), sequence, cfg)
