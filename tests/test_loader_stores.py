"""Small synthetic 4D stores for the loader, model and training tests: analytically deforming meshes.

Other test modules import `write_store` from here; the tests below check the stores themselves.
"""

from __future__ import annotations

import numpy as np
import trimesh

from neurok.data.schema import Sequence
from neurok.data.store import Store, StoreWriter

SHAPES = {
    "sphere": lambda: trimesh.creation.icosphere(subdivisions=1, radius=0.5),
    "box": lambda: trimesh.creation.box(extents=(0.6, 1.0, 0.4)).subdivide(),
    "capsule": lambda: trimesh.creation.capsule(height=0.8, radius=0.25, count=(8, 8)),
}


def deform(rest: np.ndarray, kind: int, amplitude: float, t: np.ndarray) -> np.ndarray:
    """(T, V, 3) frames: a bend, a twist about the up axis or a squash, growing with time."""
    x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
    frames = []
    for a in amplitude * np.sin(0.5 * np.pi * t):
        if kind == 0:
            moved = np.stack([x + a * y**2, y, z], 1)
        elif kind == 1:
            c, s = np.cos(a * 2 * y), np.sin(a * 2 * y)
            moved = np.stack([c * x + s * z, y, -s * x + c * z], 1)
        else:
            moved = np.stack([x * (1 + 0.5 * a), y * (1 - a), z * (1 + 0.5 * a)], 1)
        frames.append(moved)
    return np.asarray(frames, np.float32)


def synthetic_sequence(index: int, object_id: int, split: str, n_frames: int = 6) -> Sequence:
    shape = list(SHAPES)[object_id % len(SHAPES)]
    mesh = SHAPES[shape]()
    rest = np.asarray(mesh.vertices, np.float32)
    amplitude = 0.2 + 0.1 * (index % 3)
    frames = deform(rest, index % 3, amplitude, np.linspace(0, 1, n_frames)) + np.float32(0.1 * object_id)
    return Sequence(
        name=f"{shape}-{object_id}-{index}",
        frames=frames,  # objects deform about their centre, placed apart
        faces=np.asarray(mesh.faces),
        object_type="elastic",
        category=shape,
        object_id=object_id,
        split=split,
        conditions={"frame_dt": 1 / 30, "gravity_y": -9.81, "youngs_modulus": 1e4 * (1 + index)},
    )


def write_store(path, shard_sizes=(3, 3, 2, 2), splits=None, n_frames: int = 6) -> str:
    """A store with one sequence per object; `splits` maps a sequence index to its split (default train)."""
    splits = splits or {}
    index = 0
    with StoreWriter(str(path)) as writer:
        for shard_id, size in enumerate(shard_sizes):
            seqs = []
            for _ in range(size):
                seqs.append(synthetic_sequence(index, index, splits.get(index, "train"), n_frames))
                index += 1
            writer.write_shard(shard_id, seqs)
    return str(path)


def test_synthetic_store_roundtrip(tmp_path):
    path = write_store(tmp_path / "s.zarr", (2, 1), splits={2: "val"})
    store = Store(path)
    assert len(store) == 3 and len(store.shards) == 2
    assert store.split_of(2) == "val"
    seq = next(store.iter_shard(0))
    assert seq.frames.shape[0] == 6 and np.allclose(
        seq.frames[0], synthetic_sequence(0, 0, "train").frames[0]
    )
