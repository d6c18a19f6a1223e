"""executor=ray: one Ray task per loader shard gives the same bytes as the process pool."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from neurok.data.generate.run import generate
from neurok.data.store import Store
from test_generate import TINY, tiny

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

SMALL = ["objects=4", "sequences_per_object=2", "store.sequences_per_shard=2"]


def test_ray_executor_matches_process_pool(tmp_path):
    generate(tiny(*SMALL), str(tmp_path / "pool.zarr"), progress=False)
    # Ray runs in a child process: a Ray session ended inside pytest's process breaks later Ray Train runs.
    ray_tmp = tempfile.mkdtemp(prefix="nrray", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": ray_tmp}
    args = ["data", "generate", str(TINY), "--out", str(tmp_path / "ray.zarr"), "--no-progress", *SMALL]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "neurok.cli.main", *args, "executor=ray"], env=env, timeout=300
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0
    pool, ray = Store(str(tmp_path / "pool.zarr")), Store(str(tmp_path / "ray.zarr"))
    assert len(ray.shards) == 4
    assert [s["sha256"] for s in ray.shards] == [s["sha256"] for s in pool.shards]
