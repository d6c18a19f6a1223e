"""Per-sample geometry for the loader: surface sampling with correspondence, augmentation, DQ features.

Randomness comes in as an explicit `np.random.Generator` (or its draws). The sampling functions take
leading batch dimensions, so that the loader builds all the frame pairs it draws from one sequence with one
call each; their per-point work runs in numba kernels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np
from scipy.spatial.transform import Rotation

from neurok.geometry import rigid_fit


def normalise(frames: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """The store's per-sequence normalisation: frame 0's bounding box to the unit cube [-0.5, 0.5]^3."""
    return ((frames - center) / scale).astype(np.float32, copy=False)


def most_moved_frame(frames: np.ndarray) -> int:
    """The frame (T, V, 3) whose largest vertex displacement from frame 0 is largest."""
    return int(np.argmax(np.abs(frames - frames[0]).max(axis=(1, 2))))


def rotation_about_up(angle: float | np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations about the y (up) axis of the store's right-handed, y-up frame."""
    c, s = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(c), np.ones_like(c)
    rows = [c, zero, s, zero, one, zero, -s, zero, c]
    return np.stack(rows, axis=-1).reshape(*np.shape(angle), 3, 3).astype(np.float32)


def frame_maps(linear: np.ndarray, poses: Iterable[tuple[np.ndarray, np.ndarray]] | None = None):
    """(K, 2, 3, 4) affine maps of `pair_samples`' rest and target frames: linear (K, 3, 3) (augmentation)
    for both; with `poses`, each pair's normalised (rest, target) vertices, the target's best rigid motion
    onto its rest is undone before (`geometry.rigid_fit`), so the pair's displacements are deformation."""
    maps = np.zeros((len(linear), 2, 3, 4), np.float32)
    maps[:, :, :, :3] = linear[:, None]
    for k, (rest, target) in enumerate(poses or ()):
        R, c_rest, c_target = rigid_fit(rest, target)  # target ~ (rest - c_rest) R^T + c_target
        maps[k, 1, :, :3] = linear[k] @ R.T
        maps[k, 1, :, 3] = linear[k] @ (c_rest - R.T @ c_target)
    return maps


def sample_surface(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator):
    """n points uniform over the surface area: (face index (n,), barycentric weights (n, 3)).

    float64 draws, in the order they always had: evaluation and simulation keep their points for a seed.
    """
    face, bary = sample_surfaces(vertices[None], faces, rng.random((1, 3, n)))
    return face[0], bary[0]


def surface_draws(rng: np.random.Generator, n_meshes: int, n: int) -> np.ndarray:
    """The loader's (n_meshes, 3, n) uniform draws: per surface point, one that picks its face and two that
    place it inside. float32: half the cost of float64, and 24 bits resolve faces down to 6e-8 of the area."""
    return rng.random((n_meshes, 3, n), np.float32)


def interpolate(values: np.ndarray, faces: np.ndarray, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of per-vertex values (..., V, C) at surface samples -> (..., n, C) float32.

    Leading dimensions index meshes that share `faces` (frames of one sequence), each with its own samples.
    """
    meshes = values.reshape(-1, *values.shape[-2:])
    out = _interpolate(meshes, faces, face.reshape(len(meshes), -1), bary.reshape(len(meshes), -1, 3))
    return out.reshape(*face.shape, values.shape[-1])


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


# Compiled kernels: per-point loops, where numpy would spend more in call overhead and temporaries than in
# arithmetic on meshes this small. cache=True: worker processes load the machine code instead of compiling.


@numba.njit(cache=True, nogil=True)
def sample_surfaces(vertices, faces, uniform):
    """Points uniform over the area of each of the meshes (K, V, 3) sharing `faces`, from `surface_draws`
    (K, 3, n): (face index (K, n), barycentric weights (K, n, 3) float32). Point i of mesh k takes the face by
    inverse-CDF sampling of the areas with draw uniform[k, 0, i], its weights from draws uniform[k, 1:, i]."""
    n_meshes, n = len(vertices), uniform.shape[2]
    face = np.empty((n_meshes, n), np.int64)
    bary = np.empty((n_meshes, n, 3), np.float32)
    cdf = np.empty(len(faces))
    for k in range(n_meshes):
        guide = _face_sampler(vertices[k], faces, cdf)
        for i in range(n):
            face[k, i], bary[k, i, 0], bary[k, i, 1], bary[k, i, 2] = _surface_point(
                cdf, guide, uniform[k, 0, i], uniform[k, 1, i], uniform[k, 2, i]
            )
    return face, bary


@numba.njit(cache=True, nogil=True)
def _face_sampler(vertices, faces, cdf):
    """Fill cdf (F,) for a mesh's faces (see _scaled_area_cdf) and return its guide table."""
    _scaled_area_cdf(vertices, faces, cdf)
    return _guide_table(cdf)


@numba.njit(cache=True, nogil=True)
def _surface_point(cdf, guide, pick, r1, r2):
    """A surface point from its three draws: its face (by `pick`, inverse-CDF on the areas) and float32
    barycentric weights (by r1, r2)."""
    wa, wb, wc = _barycentric(r1, r2)
    return _search(cdf, guide, pick * len(cdf)), wa, wb, wc


@numba.njit(cache=True, nogil=True)
def _barycentric(r1, r2):
    """float32 weights uniform over a triangle from two uniform draws (the square root makes them uniform)."""
    s = np.sqrt(r1)
    return np.float32(1.0 - s), np.float32(s * (1.0 - r2)), np.float32(s * r2)


@numba.njit(cache=True, nogil=True)
def _scaled_area_cdf(vertices, faces, cdf):
    """The faces' cumulative distribution by area (uniform if there is none) times F, into cdf (F,); the last
    entry is infinite, so that searches stop at the last face whatever the rounding."""
    total = 0.0
    for f in range(len(faces)):
        total += _doubled_area(vertices, faces[f, 0], faces[f, 1], faces[f, 2])  # the same distribution
        cdf[f] = total
    if total > 0:
        cdf *= len(cdf) / total
    else:
        cdf[:] = np.arange(1, len(cdf) + 1)
    cdf[-1] = np.inf


@numba.njit(cache=True, nogil=True)
def _doubled_area(p, a, b, c):
    """|(p[b] - p[a]) x (p[c] - p[a])| of rows a, b, c of p (V, 3)."""
    ux, uy, uz = p[b, 0] - p[a, 0], p[b, 1] - p[a, 1], p[b, 2] - p[a, 2]
    vx, vy, vz = p[c, 0] - p[a, 0], p[c, 1] - p[a, 1], p[c, 2] - p[a, 2]
    x, y, z = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    return np.sqrt(x * x + y * y + z * z)


@numba.njit(cache=True, nogil=True)
def _guide_table(cdf):
    """guide[j]: the first face whose scaled cdf exceeds j, where the search for x in [j, j + 1) starts (Chen
    and Asau's guide table): O(1) expected per draw instead of a binary search."""
    guide = np.empty(len(cdf), np.int64)
    f = 0
    for j in range(len(cdf)):
        while cdf[f] <= j:
            f += 1
        guide[j] = f
    return guide


@numba.njit(cache=True, nogil=True)
def _search(cdf, guide, x):
    """The first face whose scaled cdf exceeds x in [0, F), as np.searchsorted(cdf, x, side="right")."""
    f = guide[int(x)]
    # A guide interval holds about one cdf entry: two branchless steps settle nearly every draw (a
    # mispredicted branch per draw would double the cost), the loop the rest.
    f += cdf[f] <= x
    f += cdf[f] <= x
    while cdf[f] <= x:
        f += 1
    return f


@numba.njit(cache=True, nogil=True)
def _interpolate(values, faces, face, bary):
    """(K, n, C) float32: per sample, the weighted values (K, V, C) at its face's three corners."""
    n_meshes, n, n_channels = face.shape[0], face.shape[1], values.shape[2]
    out = np.empty((n_meshes, n, n_channels), np.float32)
    for k in range(n_meshes):
        for i in range(n):
            a, b, c = faces[face[k, i], 0], faces[face[k, i], 1], faces[face[k, i], 2]
            wa, wb, wc = bary[k, i, 0], bary[k, i, 1], bary[k, i, 2]
            for j in range(n_channels):
                out[k, i, j] = values[k, a, j] * wa + values[k, b, j] * wb + values[k, c, j] * wc
    return out


# Declared-safe float flags for the per-point loops: contraction and reassociation, never "no infinities"
# (the cdf's last entry is infinite).
_FAST = {"contract", "reassoc", "nsz", "arcp", "afn"}


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def pair_samples(vertices, faces, rows, pairs, center, scale, maps, uniform, vertex_uniform, out):
    """The geometry of K training samples, each a frame pair of any sequence of a shard, into out (K, >= L).

    vertices (N, 3), faces (M, 3): a shard's stacked rows; rows[k] = (first vertex row, V, first face row,
    F) of pair k's sequence, whose frame t is vertices[first + t V : first + (t + 1) V]. Frames pairs[k] =
    (rest, target) are normalised by center[k] (3,), scale[k], then mapped by the affine maps[k, 0] and
    maps[k, 1] (3, 4) (augmentation, and the target's rigid motion taken out: `frame_maps`).
    Pair k's row gets, as float32 blocks:
    - (2, n, 3): n = uniform.shape[2] points uniform over the rest mesh's area (`sample_surfaces`' draws
      uniform[k] (3, n)), then their displacements to the same faces' points on the target;
    - (2, m, 3): m = vertex_uniform.shape[1] vertices, distinct unless m > V (partial Fisher-Yates by
      vertex_uniform[k]), then their displacements.
    """
    n, m = uniform.shape[2], vertex_uniform.shape[1]
    most_v, most_f = rows[:, 1].max(), rows[:, 3].max()
    rest, target = np.empty((most_v, 3), np.float32), np.empty((most_v, 3), np.float32)
    cdf, order = np.empty(most_f), np.empty(most_v, np.int64)
    for k in range(len(rows)):
        first, n_vertices, first_face, n_faces = rows[k, 0], rows[k, 1], rows[k, 2], rows[k, 3]
        mesh_faces = faces[first_face : first_face + n_faces]
        rest_at, target_at = first + pairs[k, 0] * n_vertices, first + pairs[k, 1] * n_vertices
        _normalised(vertices[rest_at : rest_at + n_vertices], center[k], scale[k], maps[k, 0], rest)
        _normalised(vertices[target_at : target_at + n_vertices], center[k], scale[k], maps[k, 1], target)
        surface = out[k, : 6 * n].reshape(2, n, 3)
        _carry_surface(rest, target, mesh_faces, uniform[k], cdf[:n_faces], surface)
        at_vertices = out[k, 6 * n : 6 * (n + m)].reshape(2, m, 3)
        _carry_vertices(rest, target, n_vertices, vertex_uniform[k], order, at_vertices)


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _normalised(frame, center, scale, affine, out):
    """A frame (V, 3) normalised as `normalise` does, then mapped by affine (3, 4), into out[:V]."""
    for v in range(len(frame)):
        x = (frame[v, 0] - center[0]) / scale
        y = (frame[v, 1] - center[1]) / scale
        z = (frame[v, 2] - center[2]) / scale
        for i in range(3):
            out[v, i] = affine[i, 0] * x + affine[i, 1] * y + affine[i, 2] * z + affine[i, 3]


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _carry_surface(rest, target, faces, draws, cdf, out):
    """Points on rest by draws (3, n) as `sample_surfaces` places them, into out (2, n, 3): positions, then
    displacements to the target's same faces."""
    guide = _face_sampler(rest, faces, cdf)
    for i in range(draws.shape[1]):
        f, wa, wb, wc = _surface_point(cdf, guide, draws[0, i], draws[1, i], draws[2, i])
        a, b, c = faces[f, 0], faces[f, 1], faces[f, 2]
        for j in range(3):
            p = rest[a, j] * wa + rest[b, j] * wb + rest[c, j] * wc
            out[0, i, j] = p
            out[1, i, j] = target[a, j] * wa + target[b, j] * wb + target[c, j] * wc - p


@numba.njit(cache=True, nogil=True)
def _carry_vertices(rest, target, n_vertices, draws, order, out):
    """m = len(draws) vertices of rest[:n_vertices], into out (2, m, 3): positions, then displacements.
    Distinct (a partial Fisher-Yates shuffle of order[:n_vertices]) unless m > n_vertices, then independent
    picks."""
    m = len(draws)
    if m <= n_vertices:
        order[:n_vertices] = np.arange(n_vertices)
    for i in range(m):
        if m > n_vertices:
            v = int(draws[i] * n_vertices)
        else:  # swap a uniform pick among the n - i not yet chosen into place i
            j = i + int(draws[i] * (n_vertices - i))
            order[i], order[j] = order[j], order[i]
            v = order[i]
        for c in range(3):
            out[0, i, c] = rest[v, c]
            out[1, i, c] = target[v, c] - rest[v, c]
