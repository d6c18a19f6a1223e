"""Unit dual quaternions: the decoder's rigid motion per query point, and their blending at mesh vertices.

A dual quaternion is 8 numbers, the real part then the dual part, each (w, x, y, z), as
data.sampling.vertex_dual_quaternions writes the encoder's. A unit one, q_r + eps q_d with |q_r| = 1 and
q_d = 1/2 (0, t) q_r, is the rigid motion x -> R(q_r) x + t.

Dual-quaternion blending (DQB, Kavan et al. 2008) of several motions is their mean with signs aligned
(q and -q are one rotation), normalised by the real part. Two rotations about one axis blend into the
rotation about that axis by the mean angle (a screw motion), where the mean of displacements would pull
the point toward the axis: the "candy-wrapper" shrinking that the paper's dual quaternions avoid.
"""

from __future__ import annotations

import torch

HEAD_CHANNELS = 7  # the decoder head's numbers per query: a quaternion offset (4) and a translation (3)
IDENTITY = (1.0, 0.0, 0.0, 0.0)  # the quaternion of no rotation


def multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of quaternions (..., 4) stored as (w, x, y, z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def conjugate(q: torch.Tensor) -> torch.Tensor:
    return torch.cat([q[..., :1], -q[..., 1:]], dim=-1)


def from_rotation_translation(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """The unit dual quaternion (..., 8) of x -> R x + t, from R's unit quaternion (..., 4) and t (..., 3)."""
    pure = torch.cat([torch.zeros_like(translation[..., :1]), translation], dim=-1)
    return torch.cat([rotation, 0.5 * multiply(pure, rotation)], dim=-1)


def from_head(raw: torch.Tensor) -> torch.Tensor:
    """The decoder head's output (..., 7) -> a unit dual quaternion (..., 8); zero is the identity.

    The rotation is the identity quaternion plus the first four numbers, normalised; the last three are
    the translation. The result is a unit dual quaternion whatever the head says (its dual part stays
    orthogonal to its real part, which normalising a free 8-vector would not give), the translation is
    in the loss's units, as the displacement head's output is, and the normalisation is smooth at the
    identity, where a rotation vector's exponential would need a special case for value and tangents.
    """
    raw = raw.to(torch.promote_types(raw.dtype, torch.float32))  # bf16 autocast: rotate points in fp32
    offset, translation = raw.split([4, 3], dim=-1)
    rotation = offset + raw.new_tensor(IDENTITY)
    return from_rotation_translation(rotation / rotation.norm(dim=-1, keepdim=True), translation)


def apply(dq: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """R x + t of dual quaternions (..., 8) with a unit real part, on points (..., 3).

    t is the vector part of 2 q_d q_r*: for a blended dual quaternion, whose dual part need not be
    orthogonal to its real part, this is DQB's translation (Kavan et al.).
    """
    real, dual = dq[..., :4], dq[..., 4:]
    w, u = real[..., :1], real[..., 1:]
    u, points = torch.broadcast_tensors(u, points)  # one motion for many points, or one for each
    rotated = points + 2 * torch.linalg.cross(u, torch.linalg.cross(u, points, dim=-1) + w * points, dim=-1)
    return rotated + 2 * multiply(dual, conjugate(real))[..., 1:]


def blend(dqs: torch.Tensor) -> torch.Tensor:
    """DQB with uniform weights of dual quaternions (..., K, 8) -> (..., 8): each sign-aligned to the
    first, averaged, normalised by the real part. The mean's real part is never zero: every aligned real
    part has a non-negative dot product with the first."""
    first = dqs[..., :1, :4]
    opposite = (dqs[..., :4] * first).sum(dim=-1, keepdim=True) < 0
    mean = torch.where(opposite, -dqs, dqs).mean(dim=-2)
    return mean / mean[..., :4].norm(dim=-1, keepdim=True)
