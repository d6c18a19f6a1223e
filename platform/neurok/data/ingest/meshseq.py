"""Per-frame mesh sequences (`objseq`, `plyseq`): a folder per sequence, one OBJ or PLY file per frame.

A source is one sequence folder or a folder of them at any depth. Frames are ordered by the numbers in
their file names (frame_2 before frame_10). Each sequence folder is its own object. The files carry no
time (`fps` sets it) and no units: positions are taken as y-up metres unless `up_axis`/`scale` say
otherwise.

Files are loaded with `process=False, maintain_order=True`: trimesh's defaults merge, split and
reorder vertices, which silently breaks the per-vertex correspondence between frames.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

import numpy as np
import trimesh
from fsspec import AbstractFileSystem

from neurok.data.ingest.common import (
    SourceRef,
    files_with_suffix,
    frame_dt,
    make_sequence,
    natural_key,
    source_label,
)
from neurok.data.schema import Sequence
from neurok.errors import BadInputError

if TYPE_CHECKING:
    from neurok.data.ingest.pipeline import IngestConfig


def discover(fs: AbstractFileSystem, root: str, suffix: str) -> list[SourceRef]:
    if fs.isfile(root):
        raise BadInputError(
            f"{root}: give the folder of a {suffix} frame sequence (or a folder of them), not a file"
        )
    folders = sorted({posixpath.dirname(p) for p in files_with_suffix(fs, root, (suffix,))}, key=natural_key)
    category = source_label(root)
    refs = []
    for folder in folders:
        name = posixpath.relpath(folder, root) if folder != root else posixpath.basename(folder)
        refs.append(SourceRef(name=name, path=folder, object_key=name, category=category))
    return refs


def read(fs: AbstractFileSystem, ref: SourceRef, cfg: IngestConfig, suffix: str) -> Sequence:
    paths = sorted((p for p in fs.ls(ref.path, detail=False) if p.lower().endswith(suffix)), key=natural_key)
    frames, faces = [], None
    for path in paths:
        vertices, frame_faces = _load_mesh(fs, path, suffix)
        if faces is None:
            faces = frame_faces
        elif len(vertices) != len(frames[0]):
            raise BadInputError(
                f"{path}: {len(vertices)} vertices, but the first frame {paths[0]} has {len(frames[0])}: the "
                f"topology drifts within sequence '{ref.name}'; every frame must share one vertex list"
            )
        elif not np.array_equal(frame_faces, faces):
            raise BadInputError(
                f"{path}: its faces differ from the first frame {paths[0]}: the topology drifts within "
                f"sequence '{ref.name}'; every frame must share one face list"
            )
        frames.append(vertices)
    return make_sequence(ref, np.stack(frames), faces, frame_dt(cfg), cfg)


def _load_mesh(fs: AbstractFileSystem, path: str, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    kind = suffix.lstrip(".")
    with fs.open(path, "rb") as f:
        try:
            mesh = trimesh.load(f, file_type=kind, process=False, maintain_order=True)
        except Exception as exc:  # trimesh raises many kinds of error on malformed files
            raise BadInputError(f"{path}: cannot read it as {kind.upper()}: {exc}") from None
    if isinstance(mesh, trimesh.Scene) and mesh.geometry:
        raise BadInputError(
            f"{path}: holds {len(mesh.geometry)} separate meshes (split by material or object), whose joint "
            "vertex order cannot be kept; export every frame as a single mesh"
        )
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise BadInputError(f"{path}: has no faces (a point cloud?); ingest needs triangle meshes")
    return np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)
