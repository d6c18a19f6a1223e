"""Kills: generation and local training SIGKILLed (the whole process group, as when a node or container dies)
at seeded random moments, then rerun. Generation must resume to a store that validates and equals an
uninterrupted run's shard by shard; training, resumed from its last checkpoint, must end at the same step
in the same MLflow run with every step's loss equal to an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from neurok.cli.main import main
from neurok.data.store import Store
from neurok.data.validate import validate
from neurok.errors import StoreError
from neurok.model.checkpoint import read_checkpoint
from test_loader_stores import write_store

pytestmark = pytest.mark.slow  # `make faults` (and `make test-full`) run them: ~3 min

TINY = Path(__file__).resolve().parents[2] / "datasets" / "tiny.yaml"
KILL_AFTER_S = sorted(np.random.default_rng(34).uniform(0.3, 3.5, 10).round(2).tolist())


def generate_args(path: Path) -> list[str]:
    return ["data", "generate", str(TINY), "--out", str(path), "--no-progress"]


def shard_hashes(path: Path) -> list[str]:
    return [s["sha256"] for s in Store(str(path)).shards]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("kills") / "whole.zarr"
    assert main(generate_args(path)) == 0
    return shard_hashes(path)


@pytest.mark.parametrize(
    "after", KILL_AFTER_S, ids=[f"SIGKILL of generation at {s:.2f} s" for s in KILL_AFTER_S]
)
def test_generation_killed_anywhere_resumes_to_the_same_store(
    after, uninterrupted, tmp_path, record_property
):
    path = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "neurok.cli.main", *generate_args(path)]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(after)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        kept = len(Store(str(path)).shards)
    except StoreError:  # killed before the store's first table was written
        kept = 0
    start = time.perf_counter()
    assert main(generate_args(path)) == 0
    recovered = time.perf_counter() - start
    record_property("stage", "kill")
    record_property("outcome", "recovered, nothing lost")
    record_property(
        "message",
        f"{kept} of {len(uninterrupted)} shards committed at the kill; the rerun resumed and finished in "
        f"{recovered:.1f} s; the store validates and equals an uninterrupted run's, shard by shard",
    )
    report = validate(str(path))
    assert report.ok, report.format()
    assert shard_hashes(path) == uninterrupted


TRAIN_KILLS = np.random.default_rng(35).uniform(0.0, 1.5, 5).round(2).tolist()


def train_args(store: str, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "pipelines/smoke.yaml",
        f"data.store={store}",
        f"output_dir={out}",
        "run_name=run",
        "data.pairs_per_sequence=2",
        "trainer.max_steps=16",
        "trainer.val_every_n_steps=8",
        "trainer.checkpoint_every_n_steps=2",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def losses(uri: str) -> tuple[list, dict[int, float]]:
    """The runs of the default experiment, and train/loss by step (a step logged again after a resume
    counts once, at its last value)."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("neurok").experiment_id])
    history = client.get_metric_history(runs[0].info.run_id, "train/loss") if runs else []
    return runs, {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> tuple[str, dict[int, float]]:
    """A store, and the train/loss of an uninterrupted run on it."""
    tmp = tmp_path_factory.mktemp("train-kills")
    store = write_store(tmp / "s.zarr", (4, 4, 4, 4), splits={3: "val", 9: "val"})
    uri = f"sqlite:///{tmp}/straight.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        assert main(train_args(store, tmp / "straight")) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return store, losses(uri)[1]


@pytest.mark.parametrize(
    "after",
    TRAIN_KILLS,
    ids=[f"SIGKILL of training {s:.2f} s after its first checkpoint" for s in TRAIN_KILLS],
)
def test_training_killed_anywhere_resumes_to_the_same_losses(
    after, training, tmp_path, monkeypatch, record_property
):
    store, straight = training
    uri = f"sqlite:///{tmp_path}/killed.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    last = tmp_path / "out" / "runs" / "run" / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "-m", "neurok.cli.main", *train_args(store, tmp_path / "out")]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(after)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    at_kill = read_checkpoint(last)["global_step"]  # readable: checkpoints are written atomically
    start = time.perf_counter()
    assert main(train_args(store, tmp_path / "out", f"resume={last}")) == 0
    recovered = time.perf_counter() - start
    runs, resumed = losses(uri)
    record_property("stage", "kill")
    record_property("outcome", "recovered, nothing lost")
    record_property(
        "message",
        f"last checkpoint at step {at_kill} of 16 when killed; resume= finished in {recovered:.1f} s, in the "
        f"same MLflow run ({runs[0].info.status}), every step's loss equal to an uninterrupted run's",
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert read_checkpoint(last)["global_step"] == 16
    assert sorted(resumed) == sorted(straight) and len(straight) == 16
    for step, loss in straight.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-5), step
