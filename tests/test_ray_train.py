"""launcher=ray: 2 Ray Train workers (gloo, CPU) on a store with uneven shards stay in step.

The slow tests in test_ray_train_faults.py kill a worker mid-run, and stop and rerun a run by name.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from neurok.train.config import load_train_config
from neurok.train.ray_launcher import train
from test_loader_stores import write_store

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

# Uneven loader shards (5, 1, 3, 1, 2 sequences; 2 of them val): a deterministic split by rank would give
# the ranks different batch counts and hang; the loader must equalise them.
SHARDS = (5, 1, 3, 1, 2)
VAL = {4: "val", 8: "val"}


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs in a short temp dir (socket paths have a length limit), stopped after."""
    temp = tempfile.mkdtemp(prefix="nrt", dir="/tmp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)
        env.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway local Ray: no token written to ~/.ray
        env.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")  # a loaded 2-core machine
        env.delenv("RAY_ADDRESS", raising=False)
        env.delenv("NEUROK_RAY_STORAGE", raising=False)
        ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, log_to_driver=False)
        try:
            yield temp
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("raytrain") / "s.zarr", SHARDS, splits=VAL)


def ray_config(store: str, out: Path, *extra: str):
    return load_train_config(
        "pipelines/smoke.yaml",
        [
            "launcher=ray",
            f"data.store={store}",
            f"output_dir={out}",
            "data.pairs_per_sequence=4",
            "trainer.max_steps=6",
            "trainer.val_every_n_steps=3",
            "trainer.checkpoint_every_n_steps=3",
            "trainer.log_every_n_steps=1",
            "ray.num_workers=2",
            "ray.timeout_s=60",  # a collective mismatch fails in a minute instead of hanging for 30
            *extra,
        ],
    )


def rank_records(result) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((result.run_dir / "ranks").glob("rank-*.json"))]


def test_two_workers_on_uneven_shards_stay_in_step(ray_local, store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    result = train(ray_config(store, tmp_path))
    assert result.global_step == 6 and result.last_checkpoint.is_file()
    assert result.run_dir.name.startswith("tiny-")  # the stable default name: <preset>-<config hash>
    records = rank_records(result)
    assert [r["rank"] for r in records] == [0, 1] == [r["ray_rank"] for r in records]
    assert {(r["world"], r["start_step"], r["end_step"], r["batches"]) for r in records} == {(2, 0, 6, 6)}

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("neurok").experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]  # one run, logged by rank 0 only
    steps = [m.step for m in client.get_metric_history(result.run_id, "train/loss")]
    assert sorted(steps) == list(range(6)) and "val/loss" in runs[0].data.metrics
    assert runs[0].data.tags["checkpoint.last"] == str(result.last_checkpoint)
    assert runs[0].data.params["launcher"] == "ray"
