"""What acts on a rollout's vertices: point forces over a time window, wind with drag, and pins.

Forces enter the equations of motion as generalized forces Q = J^T f (research/neurok-paper.md s5.3);
pins hold vertices at their positions by a stiff spring of the potential (mechanics.spring_potential).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from neurok.errors import BadInputError


@dataclass(frozen=True)
class PointForce:
    """A total force spread over a region of vertices during [start, end)."""

    region: torch.Tensor  # (V,) weights >= 0, e.g. a 0/1 mask; each vertex gets its share of `force`
    force: Sequence[float]  # (3,) N, y-up
    start: float = 0.0  # s
    end: float = math.inf  # s


class Forcing(NamedTuple):
    """The forces of a batch of rollouts (or of one, without the leading B)."""

    weights: torch.Tensor  # (B, P, V) share of point force p on each vertex; rows sum to 1
    force: torch.Tensor  # (B, P, 3) N
    start: torch.Tensor  # (B, P) s
    end: torch.Tensor  # (B, P) s
    wind: torch.Tensor  # (B, 3) m/s, the air velocity of a uniform wind
    drag: torch.Tensor  # (B,) 1/s: vertex v feels m_v drag (wind - x'_v), linear drag per unit mass
    pin: torch.Tensor  # (B, V) 1 on pinned vertices, else 0
    pin_position: torch.Tensor  # (B, V, 3) m, where each pinned vertex is held

    @classmethod
    def build(
        cls,
        num_vertices: int,
        point_forces: Sequence[PointForce] = (),
        wind: Sequence[float] = (0.0, 0.0, 0.0),
        drag: float = 0.0,
        dtype: torch.dtype | None = None,
        pin: torch.Tensor | None = None,
        pin_position: torch.Tensor | None = None,
    ) -> Forcing:
        """The forces of one rollout; `pin` (V,) marks vertices held at `pin_position` (V, 3)."""
        dtype = dtype or torch.get_default_dtype()
        weights = torch.zeros(len(point_forces), num_vertices, dtype=dtype)
        for row, p in zip(weights, point_forces, strict=True):
            if not p.region.sum() > 0:
                raise BadInputError(
                    f"a point force {list(p.force)} has an empty region: select some vertices"
                )
            row.copy_(p.region / p.region.sum())
        return cls(
            weights,
            torch.tensor([list(p.force) for p in point_forces], dtype=dtype).reshape(-1, 3),
            torch.tensor([p.start for p in point_forces], dtype=dtype),
            torch.tensor([p.end for p in point_forces], dtype=dtype),
            torch.tensor(wind, dtype=dtype),
            torch.tensor(drag, dtype=dtype),
            torch.zeros(num_vertices, dtype=dtype) if pin is None else pin.to(dtype),
            torch.zeros(num_vertices, 3, dtype=dtype) if pin_position is None else pin_position.to(dtype),
        )

    @classmethod
    def stack(cls, items: Sequence[Forcing]) -> Forcing:
        """One batch from per-rollout forcings; shorter lists of point forces are padded with zero forces."""
        counts = [f.force.shape[0] for f in items]

        def pad(t: torch.Tensor, n: int) -> torch.Tensor:
            return torch.cat([t, t.new_zeros(max(counts) - n, *t.shape[1:])])

        weights, force, start, end = (
            torch.stack([pad(t, n) for t, n in zip(ts, counts, strict=True)])
            for ts in list(zip(*items, strict=True))[:4]
        )
        return cls(
            weights,
            force,
            start,
            end,
            *(torch.stack(ts) for ts in list(zip(*items, strict=True))[4:]),
        )

    def on_vertices(self, vertices: torch.Tensor) -> Forcing:
        """The forces of some of the vertices (V',): every vertex a force or pin acts on must be there."""
        return self._replace(
            weights=self.weights[..., vertices],
            pin=self.pin[..., vertices],
            pin_position=self.pin_position[..., vertices, :],
        )

    def acted_on(self) -> torch.Tensor:
        """(V,) bool: the vertices a point force or a pin acts on, in any rollout of the batch."""
        forced = self.weights.reshape(-1, self.weights.shape[-1]).ne(0).any(0)  # False with no force
        return forced | (self.pin.reshape(-1, self.pin.shape[-1]) > 0).any(0)

    def to(self, device: torch.device | str) -> Forcing:
        return Forcing(*(t.to(device) for t in self))


def vertex_forces(forcing: Forcing, masses: torch.Tensor, t: float) -> torch.Tensor:
    """The external force on each vertex (V, 3) at time t that does not depend on its velocity, for one
    rollout: the point forces and the wind's push. The drag's share proportional to the velocity,
    -drag m_v x'_v, is a damping (mechanics.vertex_damping), which the integrator treats implicitly."""
    active = ((forcing.start <= t) & (t < forcing.end)).to(masses.dtype)
    point = torch.einsum("p,pv,pi->vi", active, forcing.weights, forcing.force)
    return point + forcing.drag * masses[:, None] * forcing.wind
