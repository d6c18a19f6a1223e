"""Reading a user's mesh for `neurok simulate` and `neurok serve`, with clear errors for what the simulator
cannot take (each names the field at fault: vertices or faces)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from neurok.errors import BadInputError

FORMATS = (".obj", ".ply", ".glb")


def check_mesh(vertices: np.ndarray, faces: np.ndarray, name: str, max_vertices: int) -> None:
    """Refuse an empty, non-finite, oversized, flat-to-a-point or non-manifold mesh, or one with vertices in
    no face, naming the fault."""
    if len(vertices) == 0 or len(faces) == 0:
        raise BadInputError(
            f"{name}: the mesh is empty ({len(vertices)} vertices, {len(faces)} faces)",
            "vertices" if len(vertices) == 0 else "faces",
        )
    if not np.isfinite(vertices).all():
        raise BadInputError(
            f"{name}: vertex {int(np.argwhere(~np.isfinite(vertices))[0, 0])} is NaN or Inf", "vertices"
        )
    if len(vertices) > max_vertices:
        raise BadInputError(
            f"{name}: {len(vertices)} vertices is more than max_vertices={max_vertices}; decimate the mesh "
            "(e.g. to a few thousand vertices) or raise max_vertices",
            "vertices",
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise BadInputError(f"{name}: face indices must lie in [0, {len(vertices)})", "faces")
    unused = np.setdiff1d(np.arange(len(vertices)), faces)
    if len(unused):
        raise BadInputError(
            f"{name}: {len(unused)} vertices (vertex {int(unused[0])} first) are in no face; remove them: "
            "they would move the mesh's normalisation (its bounding box) without being simulated",
            "vertices",
        )
    if np.ptp(vertices, axis=0).max() <= 0:
        raise BadInputError(f"{name}: every vertex is at the same point", "vertices")
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    if (counts > 2).any():
        raise BadInputError(
            f"{name}: not manifold: {int((counts > 2).sum())} edges are shared by more than two faces; "
            "repair the mesh (e.g. split those edges) first",
            "faces",
        )


def load_mesh(path: str | Path, max_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float32 and faces (F, 3) int64 of an OBJ, PLY or GLB file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: mesh file not found")
    if path.suffix.lower() not in FORMATS:
        raise BadInputError(f"{path}: unsupported mesh format; use one of {', '.join(FORMATS)}")
    vertices, faces = read_mesh(path, path.suffix[1:].lower(), str(path), max_vertices)
    return vertices.astype(np.float32), faces


def read_mesh(
    source: Path | BinaryIO, file_type: str, name: str, max_vertices: int
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V, 3) float64 and faces (F, 3) int64 of a file or a stream of `file_type` (obj, ply or
    glb), in file order, checked (check_mesh); `name` says where it came from in errors."""
    import trimesh

    try:
        # process=False, maintain_order=True: trimesh would reorder and merge vertices (traps.md 9)
        mesh = trimesh.load(source, file_type, force="mesh", process=False, maintain_order=True)
    except Exception as exc:  # trimesh raises many kinds for a broken file
        raise BadInputError(f"{name}: could not read the mesh ({type(exc).__name__}: {exc})") from None
    vertices = np.asarray(getattr(mesh, "vertices", np.zeros((0, 3))), np.float64)
    faces = np.asarray(getattr(mesh, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3)
    check_mesh(vertices, faces, name, max_vertices)
    return vertices, faces
