"""Shared fixtures: small synthetic sequences and stores (no physics engine needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from neurok.data.schema import Sequence
from neurok.data.store import StoreWriter


def wobbling_sphere(
    name: str, object_id: int, split: str = "train", frames: int = 6, seed: int = 0
) -> Sequence:
    """An icosphere squashed and translated over time: smooth, finite, fixed topology."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)[:, None, None]
    squash = 1 + 0.2 * np.sin(2 * np.pi * t) * np.array([1.0, -1.0, 1.0])
    verts = mesh.vertices[None] * squash + t * rng.normal(size=3) * 0.1
    return Sequence(
        name=name,
        frames=verts,
        faces=mesh.faces,
        object_type="elastic",
        category="elastic/blob",
        object_id=object_id,
        split=split,
        conditions={"frame_dt": 1 / 30, "gravity_y": -9.81},
    )


@pytest.fixture
def one_torch_thread():
    """Small forward-mode ops run ~50x slower with two OpenMP threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_store(tmp_path):
    """A store of 3 loader shards (2 + 2 + 1 sequences) from 3 objects."""
    path = str(tmp_path / "small.zarr")
    seqs = [
        wobbling_sphere(f"seq{i}", object_id=i // 2, split="test" if i == 4 else "train", seed=i)
        for i in range(5)
    ]
    with StoreWriter(path, attrs={"provenance": {"recipe_hash": "fixture"}}) as writer:
        for shard, block in enumerate([seqs[0:2], seqs[2:4], seqs[4:5]]):
            writer.write_shard(shard, block)
    return path, seqs
