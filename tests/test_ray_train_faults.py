"""launcher=ray fault tolerance, end to end through `neurok train` (slow: several Ray start-ups each).

- SIGKILL one training worker mid-run: Ray restarts the worker group from the latest checkpoint and the run
  ends at the configured step, in the same MLflow run, with its metrics continuing.
- Stop the whole run (SIGINT to the driver, as Ctrl-C does) and rerun the same command: it resumes from its
  last checkpoint (loader position included) and ends with the same losses as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_loader_stores import write_store
from test_ray_train import SHARDS, VAL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("rayfault") / "s.zarr", SHARDS, splits=VAL)


@pytest.fixture
def env(tmp_path):
    """The driver starts its own local Ray (2 CPUs) in a short temp dir, removed afterwards."""
    temp = tempfile.mkdtemp(prefix="nrf", dir="/tmp")
    yield os.environ | {
        "RAY_TMPDIR": temp,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    shutil.rmtree(temp, ignore_errors=True)


def command(store: str, out: Path, name: str, steps: int, every: int) -> list[str]:
    return [
        *(sys.executable, "-m", "neurok.cli.main", "train", "pipelines/smoke.yaml"),
        *("launcher=ray", f"run_name={name}", f"data.store={store}", f"output_dir={out}"),
        *("data.pairs_per_sequence=4", f"trainer.max_steps={steps}", "trainer.log_every_n_steps=1"),
        *(f"trainer.val_every_n_steps={every}", f"trainer.checkpoint_every_n_steps={every}"),
        *("ray.num_workers=2", "ray.timeout_s=60", "ray.max_failures=2"),
    ]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(predicate, proc: subprocess.Popen, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()) is not None:
            return value
        assert proc.poll() is None, f"training exited early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out:\n{log.read_text()[-3000:]}")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 400) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def checkpoints(run: Path) -> list[str]:
    """Checkpoints Ray has registered (a folder on disk may not be registered yet: killing a worker then
    restarts from the one before)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [c["checkpoint_dir_name"] for c in snapshot["checkpoint_results"]]


def rank(run: Path, r: int) -> dict | None:
    path = run / "ranks" / f"rank-{r}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-write
        return None


def history(out: Path, metric: str) -> tuple[list, dict[int, float]]:
    client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("neurok").experiment_id])
    points = client.get_metric_history(runs[0].info.run_id, metric) if runs else []
    return runs, {p.step: p.value for p in sorted(points, key=lambda p: p.timestamp)}  # latest value wins


def test_worker_killed_mid_run_restarts_from_checkpoint(store, env, tmp_path):
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]  # for history() in this process
    run, log = tmp_path / "ray_results" / "killed", tmp_path / "killed.log"
    proc = start(command(store, tmp_path, "killed", steps=30, every=5), env, log)
    victim = wait_for(lambda: rank(run, 1) if checkpoints(run) else None, proc, log)
    os.kill(victim["pid"], signal.SIGKILL)
    killed = time.monotonic()
    restarted = wait_for(lambda: r if (r := rank(run, 1)) and r["pid"] != victim["pid"] else None, proc, log)
    print(f"worker kill -> training resumed: {time.monotonic() - killed:.1f} s")
    finish(proc, log)

    assert restarted["start_step"] >= 5 and restarted["start_step"] % 5 == 0  # from a checkpoint, not 0
    final = [rank(run, r) for r in (0, 1)]
    assert [f["end_step"] for f in final] == [30, 30]
    assert final[0]["start_step"] == final[1]["start_step"] == restarted["start_step"]
    runs, losses = history(tmp_path, "train/loss")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert sorted(losses) == list(range(30))  # metrics continue in the same run, no gap
    del os.environ["MLFLOW_TRACKING_URI"]


def test_stopped_run_resumes_by_name_with_the_same_losses(store, env, tmp_path):
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    straight_env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/straight.db"}
    log = tmp_path / "straight.log"
    finish(start(command(store, tmp_path / "a", "straight", steps=12, every=4), straight_env, log), log)
    os.environ["MLFLOW_TRACKING_URI"] = straight_env["MLFLOW_TRACKING_URI"]
    _, straight = history(tmp_path, "train/loss")

    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    run, log = tmp_path / "b" / "ray_results" / "stopped", tmp_path / "stopped.log"
    cmd = command(store, tmp_path / "b", "stopped", steps=12, every=4)
    proc = start(cmd, env, log)
    wait_for(lambda: True if checkpoints(run) else None, proc, log)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the driver stops its Ray and the workers with it
    assert proc.wait(timeout=120) != 0
    stopped_at = rank(run, 0)
    assert stopped_at is not None and "end_step" not in stopped_at  # stopped mid-run

    log = tmp_path / "rerun.log"
    finish(start(cmd, env, log), log)
    resumed = rank(run, 0)
    assert resumed["start_step"] in (4, 8) and resumed["end_step"] == 12
    runs, losses = history(tmp_path, "train/loss")
    assert len(runs) == 1 and sorted(losses) == list(range(12))
    # Deterministic on the CPU: the resumed steps repeat the uninterrupted run's losses (tolerance: float
    # summation order in the all-reduce).
    for step in range(resumed["start_step"], 12):
        assert losses[step] == pytest.approx(straight[step], rel=1e-4), step
    del os.environ["MLFLOW_TRACKING_URI"]
