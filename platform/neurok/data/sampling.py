"""Per-sample geometry for the loader: surface sampling with correspondence, augmentation, DQ features.

All functions are pure numpy; randomness comes in as an explicit `np.random.Generator`.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def normalise(frames: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The store's per-sequence normalisation: frame 0's bounding box to the unit cube [-0.5, 0.5]^3."""
    return ((frames - center) / scale).astype(np.float32)


def rotation_about_up(angle: float) -> np.ndarray:
    """3x3 rotation about the y (up) axis of the store's right-handed, y-up frame."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], np.float32)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """n points uniform over the surface area: (face index (n,), barycentric weights (n, 3))."""
    areas = face_areas(vertices, faces).astype(np.float64)
    total = areas.sum()
    p = areas / total if total > 0 else None  # a degenerate mesh falls back to uniform over faces
    face = rng.choice(len(faces), size=n, p=p)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)  # the square-root warp makes (u, v, w) uniform over the triangle
    bary = np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=1).astype(np.float32)
    return face, bary


def interpolate(values: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex values (V, C) at surface samples -> (n, C)."""
    corners = values[faces[face]]  # (n, 3, C)
    return np.einsum("nk,nkc->nc", bary, corners).astype(np.float32)


def _quaternion_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) quaternions stored as (w, x, y, z)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def vertex_dual_quaternions(rest: np.ndarray, target: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex unit dual quaternion (V, 8) of the rigid motion that best maps its 1-ring rest -> target.

    Kabsch on the 1-ring (the paper's suggested default, neurok-paper.md s9.2): the rotation R maximises
    sum_n <R (p_n - p_v), q_n - q_v>; the translation then carries the vertex itself exactly.
    """
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])  # both directions: every vertex sees its whole ring
    src, dst = edges[:, 0], edges[:, 1]
    p = rest[dst] - rest[src]
    q = target[dst] - target[src]
    cov = np.zeros((len(rest), 3, 3), np.float64)
    np.add.at(cov, src, p[:, :, None] * q[:, None, :])
    u, _, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(vt.transpose(0, 2, 1) @ u.transpose(0, 2, 1)))
    d[d == 0] = 1.0
    fix = np.ones((len(rest), 3))
    fix[:, 2] = d
    rot = vt.transpose(0, 2, 1) @ (fix[:, :, None] * u.transpose(0, 2, 1))
    xyzw = Rotation.from_matrix(rot).as_quat()
    real = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    real *= np.where(real[:, :1] < 0, -1.0, 1.0)  # one hemisphere, so blending neighbours is consistent
    translation = target - np.einsum("vij,vj->vi", rot, rest)
    pure = np.concatenate([np.zeros((len(rest), 1)), translation], axis=1)
    dual = 0.5 * _quaternion_product(pure, real)
    return np.concatenate([real, dual], axis=1).astype(np.float32)


def blend_dual_quaternions(dq: np.ndarray) -> np.ndarray:
    """Normalise blended dual quaternions (..., 8) by the norm of their real part (DLB)."""
    norm = np.linalg.norm(dq[..., :4], axis=-1, keepdims=True)
    return (dq / np.maximum(norm, 1e-8)).astype(np.float32)
