"""Procedural rest shapes: closed triangle surfaces of about N vertices, and tetrahedral fillings of them.

Every shape is a pure function of a numpy Generator and a vertex budget, in its own frame (metres, centred
near the origin, axes as MuJoCo's: z up). Solids are star-shaped about their filling's anchors by
construction, so the fillings are valid: blobs, superquadrics, capsules and boxes are cones from the centre;
tori are cones from points on their centre circle, one slice of the tube at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, Delaunay


@dataclass
class Surface:
    """A closed (or, for cloth, open) triangle mesh; faces wind counter-clockwise seen from outside."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64


@dataclass
class Solid:
    """A closed surface and a tetrahedral filling whose nodes are the surface vertices, then `interior`."""

    surface: Surface
    interior: np.ndarray  # (K, 3) float64, points inside the surface
    tets: np.ndarray  # (T, 4) int64, indices into vstack(surface.vertices, interior)

    @property
    def points(self) -> np.ndarray:
        return np.vstack([self.surface.vertices, self.interior])


def fibonacci_directions(n: int) -> np.ndarray:
    """n nearly uniform unit vectors (golden-angle spiral): a sphere sampled at any vertex count."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = i * np.pi * (3 - np.sqrt(5))
    rho = np.sqrt(1 - z**2)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def sphere_faces(directions: np.ndarray) -> np.ndarray:
    """Outward-wound triangles of the unit-sphere points (their convex hull)."""
    faces = ConvexHull(directions).simplices.astype(np.int64)
    a, b, c = (directions[faces[:, k]] for k in range(3))
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    faces[inward] = faces[inward][:, ::-1]
    return faces


def cone_filling(surface: Surface) -> Solid:
    """A surface star-shaped about the origin, filled by the cones from the origin over its triangles."""
    tets = np.hstack([surface.faces, np.full((len(surface.faces), 1), len(surface.vertices))])
    return Solid(surface, np.zeros((1, 3)), tets)


def star_solid(directions: np.ndarray, radii: np.ndarray) -> Solid:
    """The solid whose surface is radii * directions (unit directions from the origin)."""
    return cone_filling(Surface(directions * radii[:, None], sphere_faces(directions)))


def smooth_noise(
    rng: np.random.Generator, directions: np.ndarray, amplitude: float, terms: int = 6
) -> np.ndarray:
    """A smooth random function on the sphere: a few random low-frequency plane waves."""
    waves = rng.normal(size=(terms, 3))
    waves *= rng.uniform(1.0, 3.0, size=(terms, 1)) / np.linalg.norm(waves, axis=1, keepdims=True)
    phases = rng.uniform(0, 2 * np.pi, size=terms)
    weights = rng.uniform(0.5, 1.0, size=terms) / np.arange(1, terms + 1)
    noise = np.sin(directions @ waves.T + phases) @ weights
    return amplitude * noise / np.abs(weights).sum()


def blob(rng: np.random.Generator, n: int, size: float) -> Solid:
    """An ellipsoid of half-size about `size` with smooth random bumps."""
    d = fibonacci_directions(n)
    axes = size * rng.uniform(0.7, 1.0, size=3)
    radii = 1 / np.linalg.norm(d / axes, axis=1)  # the ellipsoid's radius along each direction
    radii *= np.exp(smooth_noise(rng, d, amplitude=rng.uniform(0.15, 0.35)))
    return star_solid(d, radii)


def superquadric(rng: np.random.Generator, n: int, size: float) -> Solid:
    """A superellipsoid: rounded boxes, cylinders-ish and octahedra-ish, by its two exponents."""
    d = fibonacci_directions(n)
    axes = size * rng.uniform(0.6, 1.0, size=3)
    p, q = rng.uniform(1.3, 5.0, size=2)  # >= 1 keeps it convex
    x, y, z = np.abs(d / axes).T
    radii = ((x**p + y**p) ** (q / p) + z**q) ** (-1 / q)
    return star_solid(d, radii)


def capsule_radii(d: np.ndarray, radius: float, half: float) -> np.ndarray:
    """Distance along unit directions d from the centre to a z-axis capsule's surface (closed form)."""
    rho = np.linalg.norm(d[:, :2], axis=1)
    dz = np.abs(d[:, 2])
    with np.errstate(divide="ignore"):
        t_side = np.where(rho > 0, radius / rho, np.inf)
    t_cap = half * dz + np.sqrt(np.maximum(half**2 * dz**2 - half**2 + radius**2, 0))
    return np.where(t_side * dz <= half, t_side, t_cap)


def capsule(rng: np.random.Generator, n: int, size: float) -> Solid:
    """A capsule along z: a cylinder of radius r between two hemispheres."""
    d = fibonacci_directions(n)
    r = size * rng.uniform(0.35, 0.6)
    return star_solid(d, capsule_radii(d, r, size - r))


def capsule_surface(radius: float, half: float, n: int) -> Surface:
    """A capsule along z of the given radius and half-length of its cylinder."""
    d = fibonacci_directions(n)
    return star_solid(d, capsule_radii(d, radius, half)).surface


def sphere_surface(radius: float, n: int) -> Surface:
    d = fibonacci_directions(n)
    return Surface(radius * d, sphere_faces(d))


def box_surface(size: np.ndarray, n: int) -> Surface:
    """A box of full side lengths `size`, centred, with a regular grid of about n vertices on its faces."""
    size = np.asarray(size, float)
    area = 2 * (size[0] * size[1] + size[1] * size[2] + size[0] * size[2])
    h = np.sqrt(area / max(n - 2, 6))
    counts = np.maximum(np.round(size / h).astype(int), 1)
    vertices, faces = [], []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3  # (u, v, axis) is right-handed, so u x v = +axis
        for sign in (-1.0, 1.0):
            gu = np.linspace(-0.5, 0.5, counts[u] + 1) * size[u]
            gv = np.linspace(-0.5, 0.5, counts[v] + 1) * size[v]
            uu, vv = np.meshgrid(gu, gv, indexing="ij")
            pts = np.zeros((uu.size, 3))
            pts[:, u], pts[:, v], pts[:, axis] = uu.ravel(), vv.ravel(), sign * size[axis] / 2
            tris = grid_faces(counts[u] + 1, counts[v] + 1)
            if sign < 0:
                tris = tris[:, ::-1]
            faces.append(tris + sum(len(p) for p in vertices))
            vertices.append(pts)
    return weld(np.vstack(vertices), np.vstack(faces))


def box(rng: np.random.Generator, n: int, size: float) -> Solid:
    """A box with sharp edges and random proportions."""
    return cone_filling(box_surface(2 * size * rng.uniform(0.5, 1.0, size=3), n))


def torus(rng: np.random.Generator, n: int, size: float) -> Solid:
    """A torus around z with a bumpy tube of varying thickness, filled slice by slice along the tube."""
    major = size * rng.uniform(0.6, 0.72)
    minor = (size - major) * rng.uniform(0.8, 1.0)
    u, v = torus_angles(n, major, minor)
    n_u, n_v = len(u), len(v)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    bumps = sum(
        a * np.sin(ku * uu + kv * vv + ph)
        for a, ku, kv, ph in zip(
            rng.uniform(0.05, 0.15, 4),
            rng.integers(1, 4, 4),
            rng.integers(0, 3, 4),
            rng.uniform(0, 6.3, 4),
            strict=True,
        )
    )
    vertices, faces, ring = torus_grid(major, minor * (1 + bumps), u, v)
    # Filling: slice i of the tube (between rings i and i+1) is a cone from its mid-spine point over its
    # outer triangles and its two end discs; each end disc is a fan from its ring's spine point.
    centre = np.stack([major * np.cos(u), major * np.sin(u), np.zeros(n_u)], axis=1)  # (n_u, 3)
    n_surf = n_u * n_v
    spine_ids = n_surf + np.arange(n_u)
    mid_ids = n_surf + n_u + np.arange(n_u)
    mids = (
        major
        * np.cos(np.pi / n_u)
        * np.stack([np.cos(u + np.pi / n_u), np.sin(u + np.pi / n_u), np.zeros(n_u)], axis=1)
    )
    tets = []
    for i in range(n_u):
        nxt = (i + 1) % n_u
        slice_faces = faces[2 * n_v * i : 2 * n_v * (i + 1)]
        tets.append(np.hstack([slice_faces, np.full((len(slice_faces), 1), mid_ids[i])]))
        for ring_i in (i, nxt):
            a, b = ring[ring_i], np.roll(ring[ring_i], -1)
            tets.append(np.stack([np.full(n_v, spine_ids[ring_i]), a, b, np.full(n_v, mid_ids[i])], axis=1))
    return Solid(Surface(vertices, faces), np.vstack([centre, mids]), np.vstack(tets))


def torus_angles(n: int, major: float, minor: float) -> tuple[np.ndarray, np.ndarray]:
    """Angles around the centre circle (u) and around the tube (v) for about n evenly spread vertices."""
    n_v = max(int(round(np.sqrt(n * minor / major))), 6)
    n_u = max(n // n_v, 8)
    return np.linspace(0, 2 * np.pi, n_u, endpoint=False), np.linspace(0, 2 * np.pi, n_v, endpoint=False)


def torus_grid(major: float, tube: np.ndarray, u: np.ndarray, v: np.ndarray):
    """A torus around z with tube radius tube[i, j] at angles (u[i], v[j]): vertices, faces, id grid."""
    uu, vv = np.meshgrid(u, v, indexing="ij")
    radial = np.stack([np.cos(uu), np.sin(uu), np.zeros_like(uu)], axis=-1)
    centre = major * radial
    vertices = centre + tube[..., None] * (
        np.cos(vv)[..., None] * radial + np.sin(vv)[..., None] * [0.0, 0.0, 1.0]
    )
    ring = np.arange(len(u) * len(v)).reshape(len(u), len(v))
    return vertices.reshape(-1, 3), periodic_grid_faces(ring), ring


def ring_surface(major: float, minor: float, n: int) -> Surface:
    """A plain torus around z (a handle, a link)."""
    u, v = torus_angles(n, major, minor)
    vertices, faces, _ = torus_grid(major, np.full((len(u), len(v)), minor), u, v)
    return Surface(vertices, faces)


def sheet(size_u: float, size_v: float, n: int) -> tuple[Surface, int, int]:
    """A flat rectangle in the z = 0 plane, centred, gridded with about n vertices (normal +z).

    Returns the surface and its grid shape (nu, nv): vertex (i, j) is i * nv + j, i along x.
    """
    nv = max(int(round(np.sqrt(n * size_v / size_u))), 2)
    nu = max(int(round(n / nv)), 2)
    x, y = np.meshgrid(
        np.linspace(-size_u / 2, size_u / 2, nu), np.linspace(-size_v / 2, size_v / 2, nv), indexing="ij"
    )
    vertices = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)
    return Surface(vertices, grid_faces(nu, nv)), nu, nv


def spherical_cap(radius: float, opening: float, n: int) -> tuple[Surface, np.ndarray]:
    """The part of a sphere within `opening` radians of its +z pole, centred on the sphere's centre.

    Returns the surface (outward normals) and the indices of its rim vertices. Triangulated in the
    azimuthal equidistant projection, which maps the cap one-to-one onto a disc.
    """
    area = 2 * np.pi * radius**2 * (1 - np.cos(opening))
    spacing = np.sqrt(area / n)
    n_rim = max(int(round(2 * np.pi * radius * np.sin(opening) / spacing)), 6)
    d = fibonacci_directions(int(round(n * 2 / (1 - np.cos(opening)))))
    polar = np.arccos(np.clip(d[:, 2], -1, 1))
    inner = polar < opening - 0.5 * spacing / radius
    azimuth = np.arctan2(d[inner, 1], d[inner, 0])
    rim_azimuth = np.linspace(0, 2 * np.pi, n_rim, endpoint=False)
    polar = np.concatenate([polar[inner], np.full(n_rim, opening)])
    azimuth = np.concatenate([azimuth, rim_azimuth])
    faces = Delaunay(np.stack([polar * np.cos(azimuth), polar * np.sin(azimuth)], axis=1)).simplices
    vertices = radius * np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1
    )
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    inward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) < 0
    faces[inward] = faces[inward][:, ::-1]
    return Surface(vertices, faces.astype(np.int64)), np.arange(inner.sum(), inner.sum() + n_rim)


def grid_faces(nu: int, nv: int) -> np.ndarray:
    """Counter-clockwise (in the u-v plane) triangles of an nu x nv grid of points indexed i * nv + j."""
    i, j = np.meshgrid(np.arange(nu - 1), np.arange(nv - 1), indexing="ij")
    a = (i * nv + j).ravel()
    b, c, d = a + nv, a + nv + 1, a + 1
    return np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def periodic_grid_faces(ids: np.ndarray) -> np.ndarray:
    """Triangles of a grid of point ids wrapping in both directions, grouped by row (2 * n_cols per row)."""
    a = ids
    b = np.roll(ids, -1, axis=0)
    c = np.roll(b, -1, axis=1)
    d = np.roll(ids, -1, axis=1)
    return np.stack([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], axis=2).reshape(-1, 3)


def weld(vertices: np.ndarray, faces: np.ndarray, tol: float = 1e-9) -> Surface:
    """Merge coincident vertices (shared grid edges), keeping first-seen order."""
    keys = np.round(vertices / tol).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return Surface(vertices[first[order]], rank[inverse.ravel()][faces])


def tet_volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Signed volumes of tetrahedra."""
    a, b, c, d = (points[tets[:, k]] for k in range(4))
    return np.einsum("ij,ij->i", np.cross(b - a, c - a), d - a) / 6


def enclosed_volume(surface: Surface) -> float:
    """Volume inside a closed, outward-wound surface (divergence theorem)."""
    a, b, c = (surface.vertices[surface.faces[:, k]] for k in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def rotation_about(axis, angle: float) -> np.ndarray:
    """3x3 rotation by `angle` radians about `axis` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


SOLIDS = {"blob": blob, "torus": torus, "capsule": capsule, "superquadric": superquadric, "box": box}
