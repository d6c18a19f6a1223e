"""Conditions as boundary conditions (research/neurok-paper.md s5.3): prescribed vertex positions and
velocities at t = 0 become an initial state (q0, q0'), which the simulator then integrates.

    min_q0  sum_v w_v |x_v(q0) - x*_v|^2 + lambda/2 |q0 - s|^2       (Adam, from the rest state s)
    min_q0' sum_v u_v |J_v(q0) q0' - x'*_v|^2                         (exact: linear least squares)

The velocity term is quadratic in q0', so it is solved exactly at the fitted q0 instead of by Adam:
Adam moves each coordinate by about lr per iteration, too little to reach the |q0'| of tens that a
1 m/s poke needs in a few hundred iterations. Positions then set q0 alone, so a poke (no positions
prescribed) starts from rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.func import vmap

from neurok.dynamics.config import BoundaryConfig
from neurok.dynamics.mechanics import solve_metric
from neurok.dynamics.rigid import FloatingShape
from neurok.dynamics.shape import ReducedShape


class BoundaryConditions(NamedTuple):
    """Prescribed vertex positions and velocities at t = 0, of one rollout (or a batch: leading B)."""

    position_weight: torch.Tensor  # (V,) 0 where free, e.g. a 0/1 mask of the dragged region
    position: torch.Tensor  # (V, 3) m
    velocity_weight: torch.Tensor  # (V,) 0 where free
    velocity: torch.Tensor  # (V, 3) m/s

    @classmethod
    def poke(cls, region: torch.Tensor, velocity: Sequence[float]) -> BoundaryConditions:
        """A region set moving at `velocity` from the rest state."""
        zeros = region.new_zeros(region.shape[0], 3)
        return cls(torch.zeros_like(region), zeros, region, zeros + region.new_tensor(velocity))

    @classmethod
    def drag(
        cls, positions: torch.Tensor, region: torch.Tensor, offset: Sequence[float]
    ) -> BoundaryConditions:
        """A region of `positions` (V, 3) displaced by `offset` and released at rest."""
        return cls(
            region,
            positions + positions.new_tensor(offset),
            torch.zeros_like(region),
            torch.zeros_like(positions),
        )

    @classmethod
    def velocity_field(cls, velocity: torch.Tensor) -> BoundaryConditions:
        """Every vertex given an initial velocity (V, 3)."""
        ones = velocity.new_ones(velocity.shape[0])
        return cls(torch.zeros_like(ones), torch.zeros_like(velocity), ones, velocity)

    @classmethod
    def stack(cls, items: Sequence[BoundaryConditions]) -> BoundaryConditions:
        return cls(*(torch.stack(ts) for ts in zip(*items, strict=True)))


def region_near(positions: torch.Tensor, center: Sequence[float], radius: float) -> torch.Tensor:
    """A 0/1 mask (V,) of the vertices within `radius` of `center`; the nearest vertex if none is."""
    distance = (positions - positions.new_tensor(center)).norm(dim=-1)
    mask = (distance <= radius).to(positions.dtype)
    if not mask.any():
        mask[distance.argmin()] = 1.0
    return mask


def solve_initial_state(
    shape: ReducedShape | FloatingShape, bc: BoundaryConditions, cfg: BoundaryConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q0, q0') (B, k_q) matching batched boundary conditions; `shape` is one object or a stack of B."""
    batch, dtype, device = bc.position.shape[0], bc.position.dtype, bc.position.device
    start = shape.start(batch).to(device, dtype)
    q = start.clone()
    if bc.position_weight.any():
        weight = bc.position_weight / bc.position_weight.sum(-1, keepdim=True).clamp_min(
            torch.finfo(dtype).tiny
        )
        q.requires_grad_(True)
        opt = torch.optim.Adam([q], lr=cfg.lr)
        for _ in range(cfg.iterations):
            misfit = (weight * (shape.positions(q) - bc.position).square().sum(-1)).sum(-1)
            loss = misfit + 0.5 * cfg.prior_weight * (q - start).square().sum(-1)
            # Items are independent and Adam acts per coordinate, so one Adam on the sum is one per item;
            # autograd.grad (not backward) leaves the decoder's parameter gradients alone.
            (q.grad,) = torch.autograd.grad(loss.sum(), q)
            opt.step()
        q = q.detach()
    with torch.no_grad():
        J = vmap(lambda q, t: shape.jacobian_fn(t)(q)[1], in_dims=(0, shape.in_dims))(q, shape.tensors)
        G = torch.einsum("bvik,bv,bvil->bkl", J, bc.velocity_weight, J)
        b = torch.einsum("bvik,bv,bvi->bk", J, bc.velocity_weight, bc.velocity)
        return q, solve_metric(G, b, cfg.ridge)
