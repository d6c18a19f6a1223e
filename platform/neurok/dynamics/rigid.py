"""Rigid motion as first-class coordinates: a floating frame that carries the decoded deformation.

    s = (c, theta, q)                              generalized coordinates: 3 + 3 + k_q
    y(q) = x(q) - sum_v m_v x_v(q) / M             the decoded shape about its own centre of mass
    x(s) = c + Rot(theta) y(q)                     world positions; Rot is the exponential map

Why this representation: the decoder learned shapes, not where an object is or how it is turned, so a
latent that had to carry a fall or a throw would (and did: a dropped object climbed back up, as if hung
from a spring) pull the object back to its rest pose under the prior. With c at the centre of mass,
translation decouples exactly: sum_v m_v y_v = 0 makes the kinetic cross term and the deformation's
share of gravity vanish, so an unsupported object falls at g whatever the decoder, and c' is the linear
momentum over M. The Lagrangian is invariant under rotations of the world, and the variational
integrator is symplectic and momentum-preserving, so angular momentum is conserved too (discrete
Noether). At s0 = (centre of mass of M0, 0, 0) the object is its rest mesh exactly.

theta is a rotation vector. Its chart is regular for |theta| < 2 pi; `rechart` moves a state with
|theta| > pi to the equivalent vector theta (1 - 2 pi / |theta|) (the same rotation), carrying q' so
that the vertex velocities do not change. The simulator does this between output frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch.func import vmap

from neurok.dynamics.shape import LatentShape, ReducedShape, ShapeTensors

RIGID = 6  # c and theta lead the coordinates


def _series(t2: torch.Tensor, exact: torch.Tensor, c0: float, c1: float, c2: float) -> torch.Tensor:
    """`exact` where the angle is not small, else its Taylor series c0 + c1 t^2 + c2 t^4 (no 0/0)."""
    return torch.where(t2 < 1e-4, c0 + t2 * (c1 + t2 * c2), exact)


def hat(w: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3): hat(w) v = w x v."""
    zero = torch.zeros_like(w[..., 0])
    rows = (
        (zero, -w[..., 2], w[..., 1]),
        (w[..., 2], zero, -w[..., 0]),
        (-w[..., 1], w[..., 0], zero),
    )
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def _coefficients(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """sin t / t, (1 - cos t) / t^2, (t - sin t) / t^3 of t = |theta|, stable at t = 0."""
    t2 = theta.square().sum(-1)
    t = t2.clamp_min(1e-4).sqrt()  # only read where t^2 >= 1e-4
    a = _series(t2, t.sin() / t, 1.0, -1 / 6, 1 / 120)
    b = _series(t2, (1 - t.cos()) / t2.clamp_min(1e-4), 0.5, -1 / 24, 1 / 720)
    c = _series(t2, (t - t.sin()) / (t * t2.clamp_min(1e-4)), 1 / 6, -1 / 120, 1 / 5040)
    return a, b, c


def rotation(theta: torch.Tensor) -> torch.Tensor:
    """Rot(theta) = exp(hat(theta)) (3, 3), by Rodrigues' formula."""
    return rotation_and_left_jacobian(theta)[0]


def left_jacobian(theta: torch.Tensor) -> torch.Tensor:
    """J_l(theta) (3, 3): Rot(theta + d) = Rot(J_l d) Rot(theta) to first order in d."""
    return rotation_and_left_jacobian(theta)[1]


def rotation_and_left_jacobian(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rot(theta) and J_l(theta) from one set of coefficients (a step needs both)."""
    a, b, c = _coefficients(theta)
    K = hat(theta)
    K2 = K @ K
    eye = torch.eye(3, dtype=theta.dtype, device=theta.device)
    return eye + a * K + b * K2, eye + b * K + c * K2


def _about_centre(x: torch.Tensor, masses: torch.Tensor) -> torch.Tensor:
    """x minus its mass-weighted mean over the vertex axis (the first), for x (V, ...)."""
    mean = torch.tensordot(masses, x, dims=([0], [0])) / masses.sum()
    return x - mean


def floating_position(deformation: Callable, masses: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """x(s) (V, 3) for one object; `deformation` is q -> x(q) of the reduced shape."""
    y = _about_centre(deformation(s[RIGID:]), masses)
    return s[:3] + y @ rotation(s[3:RIGID]).T


def floating_jacobian(
    deformation: Callable, masses: torch.Tensor, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x(s) (V, 3) and dx/ds (V, 3, 6 + k_q) for one object; `deformation` is q -> (x(q), dx/dq)."""
    x, J = deformation(s[RIGID:])
    y, Jy = _about_centre(x, masses), _about_centre(J, masses)
    R, J_l = rotation_and_left_jacobian(s[3:RIGID])
    turned = y @ R.T
    # d(R y)/d theta = -hat(R y) J_l(theta): column i is J_l[:, i] x (R y)
    J_theta = torch.linalg.cross(J_l.T[None], turned[:, None, :]).transpose(1, 2)
    J_c = torch.eye(3, dtype=x.dtype, device=x.device).expand(x.shape[0], 3, 3)
    return s[:3] + turned, torch.cat([J_c, J_theta, R @ Jy], dim=-1)


@dataclass(frozen=True)
class FloatingShape:
    """A ReducedShape carried by a rigid frame (module docstring): the shape interface of the simulator
    (dims, tensors, in_dims, position_fn, jacobian_fn, positions, start, elastic, rechart)."""

    reduced: ReducedShape

    @property
    def latent(self) -> LatentShape:
        return self.reduced.latent

    @property
    def dims(self) -> int:
        return RIGID + self.reduced.dims

    @property
    def batch_size(self) -> int | None:
        return self.reduced.batch_size

    @property
    def tensors(self) -> ShapeTensors:
        return self.reduced.tensors

    @property
    def in_dims(self) -> int | None:
        return self.reduced.in_dims

    @property
    def elastic(self) -> torch.Tensor:
        """(dims,) 1 on the coordinates the prior's restoring force and damping act on: q, not the frame."""
        mask = torch.ones(self.dims, dtype=self.reduced.basis.dtype, device=self.reduced.basis.device)
        mask[:RIGID] = 0
        return mask

    def position_fn(self, tensors: ShapeTensors) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(floating_position, self.reduced.position_fn(tensors), tensors.masses)

    def jacobian_fn(
        self, tensors: ShapeTensors
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        return partial(floating_jacobian, self.reduced.jacobian_fn(tensors), tensors.masses)

    def positions(self, s: torch.Tensor) -> torch.Tensor:
        """Vertices (B, V, 3) of coordinates s (B, dims)."""
        return vmap(lambda s, t: self.position_fn(t)(s), in_dims=(0, self.in_dims))(s, self.tensors)

    def latents(self, s: torch.Tensor) -> torch.Tensor:
        """z of the deformation coordinates of s (B, ..., dims)."""
        return self.reduced.latents(s[..., RIGID:])

    def start(self, batch: int) -> torch.Tensor:
        """(B, dims) the rest state: the frame at M0's centre of mass, unturned, undeformed."""
        masses, rest = self.latent.masses, self.latent.rest
        centre = torch.einsum("...v,...vi->...i", masses, rest) / masses.sum(-1, keepdim=True)
        s = rest.new_zeros(batch, self.dims)
        s[:, :3] = centre
        return s

    def rechart(self, s: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(s, s') in the chart |theta| <= pi for states (B, dims) past it, the same configuration and
        vertex velocities; None when every state is inside."""
        theta = s[:, 3:RIGID]
        angle = theta.norm(dim=-1, keepdim=True)
        outside = angle > torch.pi
        if not outside.any():
            return None
        new = torch.where(outside, theta * (1 - 2 * torch.pi / angle.clamp_min(torch.pi)), theta)
        # the same angular velocity: J_l(new) new' = J_l(theta) theta'
        omega = (vmap(left_jacobian)(theta) @ v[:, 3:RIGID, None]).squeeze(-1)
        rate = torch.linalg.solve(vmap(left_jacobian)(new), omega)
        return torch.cat([s[:, :3], new, s[:, RIGID:]], -1), torch.cat([v[:, :3], rate, v[:, RIGID:]], -1)
