"""executor=ray: one Ray task per loader shard gives the same bytes as the process pool."""

import shutil
import tempfile

import pytest

from neurok.data.generate.run import generate
from neurok.data.store import Store
from test_generate import tiny


@pytest.fixture
def ray_tmpdir(monkeypatch):
    path = tempfile.mkdtemp(prefix="nrray", dir="/tmp")  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ray_executor_matches_process_pool(tmp_path, ray_tmpdir):
    recipe = tiny("objects=4", "sequences_per_object=2", "store.sequences_per_shard=2")
    generate(recipe, str(tmp_path / "pool.zarr"), progress=False)
    recipe.executor = "ray"
    generate(recipe, str(tmp_path / "ray.zarr"), progress=False)
    pool, ray = Store(str(tmp_path / "pool.zarr")), Store(str(tmp_path / "ray.zarr"))
    assert len(ray.shards) == 4
    assert [s["sha256"] for s in ray.shards] == [s["sha256"] for s in pool.shards]
