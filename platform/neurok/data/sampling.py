"""Per-sample geometry for the loader: surface sampling with correspondence, augmentation, DQ features.

All functions are pure numpy; randomness comes in as an explicit `np.random.Generator` (or its draws).
The sampling functions take optional leading batch dimensions, so that the loader builds all the frame
pairs it draws from one sequence with one call each.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def normalise(frames: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The store's per-sequence normalisation: frame 0's bounding box to the unit cube [-0.5, 0.5]^3."""
    return ((frames - center) / scale).astype(np.float32, copy=False)


def rotation_about_up(angle: float | np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about the y (up) axis of the store's right-handed, y-up frame."""
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    rows = [c, zero, s, zero, one, zero, -s, zero, c]
    return np.stack(rows, axis=-1).reshape(*np.shape(angle), 3, 3).astype(np.float32)


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(..., F) triangle areas of (..., V, 3) vertices."""
    # Corners as contiguous (..., 3, F) coordinate rows: the cross product is then cheap elementwise work.
    a, b, c = (np.take(np.moveaxis(vertices, -1, -2), faces[:, k], axis=-1) for k in range(3))
    (ux, uy, uz), (vx, vy, vz) = np.moveaxis(b - a, -2, 0), np.moveaxis(c - a, -2, 0)
    x, y, z = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    return 0.5 * np.sqrt(x * x + y * y + z * z)


def area_cdf(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(..., F) float64 cumulative distribution of the faces by area, ending at exactly 1.

    The arithmetic is `Generator.choice(p=areas / total)`'s, so `sample_faces` draws what it drew. A
    degenerate mesh (no area) falls back to uniform over faces.
    """
    areas = face_areas(vertices, faces).astype(np.float64)
    total = areas.sum(axis=-1, keepdims=True)
    p = np.divide(areas, total, out=np.ones_like(areas), where=total > 0)
    cdf = np.cumsum(p, axis=-1)
    return cdf / cdf[..., -1:]


def sample_faces(cdf: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: (..., n) face indices for (..., n) uniform draws in [0, 1) on (..., F) `cdf`.

    side="right" never picks a zero-area face (its cdf equals its predecessor's). Rows are searched in one
    call by shifting row r's cdf and draws by r; a shift can round a draw up into the next row, so clip.
    """
    n_faces = cdf.shape[-1]
    shift = np.arange(int(np.prod(cdf.shape[:-1]))).reshape(*cdf.shape[:-1], 1)
    flat = np.searchsorted((cdf + shift).ravel(), uniform + shift, side="right")
    return np.minimum(flat - shift * n_faces, n_faces - 1)


def barycentric(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """(..., 3) float32 barycentric weights uniform over a triangle, from two uniform draws of shape (...)."""
    s = np.sqrt(r1)  # the square-root warp makes (u, v, w) uniform over the triangle
    return np.stack([1.0 - s, s * (1.0 - r2), s * r2], axis=-1).astype(np.float32)


def sorted_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Independent uniform draws in [0, 1), sorted along the last axis, in O(n): the normalised cumulative
    sums of n + 1 exponential spacings (Devroye, Non-Uniform Random Variate Generation, V.2)."""
    sums = np.cumsum(rng.standard_exponential((*shape[:-1], shape[-1] + 1)), axis=-1)
    return sums[..., :-1] / sums[..., -1:]


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """n points uniform over the surface area: (face index (n,), barycentric weights (n, 3))."""
    face = sample_faces(area_cdf(vertices, faces), rng.random(n))
    return face, barycentric(rng.random(n), rng.random(n))


def sample_surfaces(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """n independent points uniform over the area of each of the meshes (K, V, 3) sharing `faces`:
    (face index (K, n), barycentric weights (K, n, 3)). The loader's batched, faster `sample_surface`.

    Sorted draws make the search's branches predictable (several times faster); permuting the faces
    afterwards gives back independent samples in random order.
    """
    face = sample_faces(area_cdf(vertices, faces), sorted_uniform(rng, (len(vertices), n)))
    face = rng.permuted(face, axis=-1)
    shape = face.shape
    return face, barycentric(rng.random(shape, np.float32), rng.random(shape, np.float32))


def _flat_rows(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Row indices (..., m, ...) into each mesh of values (..., V, C) -> into values.reshape(-1, C)."""
    n_rows, batch = values.shape[-2], values.shape[:-2]
    first_row = np.arange(0, int(np.prod(batch)) * n_rows, n_rows, dtype=index.dtype)
    return index + first_row.reshape(*batch, *[1] * (index.ndim - len(batch)))


def gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows of per-vertex values (..., V, C) at indices (..., m) of each mesh -> (..., m, C).

    np.take on the flattened rows is several times faster than fancy indexing or take_along_axis.
    """
    return np.take(values.reshape(-1, values.shape[-1]), _flat_rows(values, index), axis=0)


def interpolate(values: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex values (..., V, C) at surface samples -> (..., n, C) float32.

    Leading dimensions index meshes that share `faces` (frames of one sequence), each with its own samples.
    """
    rows = values.reshape(-1, values.shape[-1])
    corners = _flat_rows(values, np.take(faces, face, axis=0))  # (..., n, 3)
    out = np.take(rows, corners[..., 0], axis=0) * bary[..., 0:1]
    for k in (1, 2):  # corner by corner: contiguous (..., n, C) arrays, no (..., n, 3, C) one
        out += np.take(rows, corners[..., k], axis=0) * bary[..., k : k + 1]
    return out.astype(np.float32, copy=False)


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
