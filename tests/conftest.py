"""Shared fixtures: small synthetic sequences and stores (no physics engine needed), a tiny registered
model, and the clean-up of what killed processes leave in the temp folder."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


# A registered model's simulate settings, small enough that a rollout of a few frames takes a second or two.
SIMULATE = [
    "shape.points=128",
    "shape.max_queries=128",
    "dynamics.reduction.samples=16",
    "dynamics.reduction.max_dims=3",
    "dynamics.boundary.iterations=10",
    "dynamics.simulator.frames=4",
    "dynamics.simulator.damping=1.0",
]
GOOD = {"test/chamfer_l1": 0.10, "test/ik_chamfer_l1": 0.12, "test/energy_drift": 0.01}  # passes the gates


@contextmanager
def registered_model(tmp: Path) -> Iterator[dict]:
    """A tracking store in `tmp` (MLFLOW_TRACKING_URI points at it until the context closes) holding a
    briefly trained tiny model registered as `neurok` version 1, the champion. Yields {"uri", "tmp", "v1",
    "add"}: add(report) registers the same model again with that evaluation report, returns its version."""
    from neurok.config import load_config
    from neurok.eval.config import SimulateConfig
    from neurok.model.checkpoint import read_checkpoint
    from neurok.track.registry import RegistryConfig, promote, register
    from neurok.train.local import train
    from test_loader_stores import write_store
    from test_train import tiny_config

    uri = f"sqlite:///{tmp}/mlflow.db"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        store = write_store(tmp / "s.zarr", (4, 4), splits={3: "val"})
        result = train(
            tiny_config(store, tmp / "out", "run_name=reg", "trainer.max_steps=4", "trainer.plot_objects=0")
        )
        checkpoint = read_checkpoint(result.last_checkpoint)
        simulate_cfg = load_config(SimulateConfig, "pipelines/simulate.yaml", SIMULATE)

        def add(report: dict) -> str:
            dataset = {"path": store, "content_hash": "abc123"}
            version = register(
                uri, result.run_id, "neurok", checkpoint, "preset: tiny\n", dataset, report, simulate_cfg
            )
            return str(version.version)

        v1 = add(GOOD)
        assert promote(uri, f"neurok/{v1}", RegistryConfig()).promoted
        yield {"uri": uri, "tmp": tmp, "add": add, "v1": v1}
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def live_unix_sockets() -> set[str] | None:
    """The paths of the unix sockets some process holds (Linux's /proc/net/unix); None where unknown."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return None
    return {fields[-1] for fields in map(str.split, lines) if len(fields) == 8}


def stale_multiprocessing_folders(keep: set[str]) -> list[Path]:
    """This user's /tmp/pymp-* folders, other than `keep` and this process's own, whose sockets no
    process holds: a forkserver's, left by a process killed before multiprocessing's exit clean-up
    could run (the fault tests' SIGKILLed trainers, Ray's workers)."""
    live = live_unix_sockets()
    if live is None:
        return []
    own = multiprocessing.process.current_process()._config.get("tempdir")
    stale = []
    for folder in Path(tempfile.gettempdir()).glob("pymp-*"):
        if str(folder) in keep or str(folder) == own or folder.stat().st_uid != os.getuid():
            continue
        sockets = [str(f) for f in folder.iterdir()]
        if sockets and not live.intersection(sockets):
            stale.append(folder)
    return stale


@pytest.fixture(scope="session", autouse=True)
def no_multiprocessing_debris():
    """A test run leaves no /tmp/pymp-* folder behind (those there before it are not ours to judge)."""
    before = {str(p) for p in Path(tempfile.gettempdir()).glob("pymp-*")}
    yield
    for folder in stale_multiprocessing_folders(before):
        shutil.rmtree(folder, ignore_errors=True)
