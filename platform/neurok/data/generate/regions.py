"""Regions of a surface that the conditions act on (pokes, drags), and the directions they act in."""

from __future__ import annotations

import numpy as np


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit normals, outward for outward-wound faces."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    face_normals = np.cross(b - a, c - a)
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def patch(vertices: np.ndarray, centre: int, radius: float, minimum: int = 3) -> np.ndarray:
    """Vertices within `radius` of vertex `centre` (at least its `minimum` nearest)."""
    dist = np.linalg.norm(vertices - vertices[centre], axis=1)
    inside = np.flatnonzero(dist <= radius)
    return inside if len(inside) >= minimum else np.argsort(dist, kind="stable")[:minimum]


def push_direction(normal: np.ndarray, rng: np.random.Generator, jitter: float = 0.3) -> np.ndarray:
    """Into the surface along -normal, tilted by a random amount up to about `jitter`."""
    d = -normal + jitter * rng.normal(size=3) / np.sqrt(3)
    return d / np.linalg.norm(d)
