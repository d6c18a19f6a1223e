"""Optional rest shapes read at run time from installed pip packages (never copied into the repository).

A recipe's `asset_packs` names them. `pybullet_data` (in the `pybullet` wheel) holds a thousand
procedural blobs (`random_urdfs/NNN/NNN.obj`); stacks mix them in among their primitive bodies. They are
rigid there: almost none is star-shaped, which the elastic solids' fillings need.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from neurok.data.generate.shapes import Surface
from neurok.errors import BadInputError

PACKS = {"pybullet_data": ("pybullet", "random_urdfs/*/*.obj")}  # pack -> (pip package, mesh glob)


def pack_dir(pack: str) -> Path:
    """Where an installed pack lives; a clear error when it is unknown or not installed."""
    if pack not in PACKS:
        raise BadInputError(f"recipe: asset pack '{pack}' is not supported; supported: {sorted(PACKS)}")
    spec = importlib.util.find_spec(pack)
    if spec is None or not spec.submodule_search_locations:
        raise BadInputError(
            f"recipe: asset pack '{pack}' is not installed; `pip install {PACKS[pack][0]}` or drop it "
            "from asset_packs"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def mesh_files(packs: list[str]) -> list[Path]:
    """Every mesh the packs offer, in a fixed order."""
    return sorted(f for pack in packs for f in pack_dir(pack).glob(PACKS[pack][1]))


def read_obj(path: Path) -> Surface:
    """Vertices and (fan-triangulated) faces of an OBJ file, in file order."""
    vertices, faces = [], []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            vertices.append([float(x) for x in parts[1:4]])
        elif parts and parts[0] == "f":
            ids = [int(p.split("/")[0]) for p in parts[1:]]
            ids = [i - 1 if i > 0 else len(vertices) + i for i in ids]
            faces += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    return Surface(np.array(vertices, float).reshape(-1, 3), np.array(faces, np.int64).reshape(-1, 3))


def asset_surface(packs: list[str], rng: np.random.Generator, size: float) -> Surface:
    """A random mesh from the packs, centred on its bounding box and scaled to half-extent `size`."""
    files = mesh_files(packs)
    if not files:
        raise BadInputError(f"recipe: asset packs {packs} hold no meshes")
    path = files[rng.integers(len(files))]
    surface = read_obj(path)
    if len(surface.faces) == 0:
        raise BadInputError(f"asset {path}: a mesh without faces")
    lo, hi = surface.vertices.min(axis=0), surface.vertices.max(axis=0)
    surface.vertices = (surface.vertices - (lo + hi) / 2) * (2 * size / (hi - lo).max())
    return surface
