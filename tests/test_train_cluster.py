"""`make train-cluster` with RAY_ADDRESS: scripts/train_cluster.py submits to a cluster started separately
(`ray start --head`, token auth) and leaves it running; the run lands at the paths the script prints,
resolved on the client (not in the job's throwaway copy of the working dir).

Slow: a Ray head start-up plus a 2-worker job (about a minute on 2 cores).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_loader_stores import write_store
from test_ray_train import SHARDS, VAL

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 4
TINY = [
    *("preset=tiny", "data.num_workers=0", "data.pairs_per_sequence=4", "data.points=64"),
    *("data.queries=64", "data.vertices=32", f"trainer.max_steps={STEPS}", "trainer.max_minutes=0"),
    *("trainer.val_every_n_steps=2", "trainer.checkpoint_every_n_steps=2", "trainer.log_every_n_steps=1"),
    *("trainer.progress_bar=false", "trainer.plot_objects=0", "trainer.system_metrics=false"),
    *("ray.num_workers=2", "ray.timeout_s=60"),
]


@dataclass
class Cluster:
    address: str  # the dashboard (Jobs API): RAY_ADDRESS for the script
    gcs: str  # for `ray status`
    env: dict
    head: subprocess.Popen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, head: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no Ray dashboard on port {port} after {timeout:.0f} s")


@pytest.fixture
def cluster():
    """A 2-CPU head on free ports, started as a user would: token auth, the venv's `python` first on PATH
    (a job's entrypoint runs the cluster's `python`)."""
    temp = tempfile.mkdtemp(prefix="ntc", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{BIN}{os.pathsep}{env['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # `ray start --block` stops its node at once on SIGINT; a background shell may have us ignore it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    head = subprocess.Popen(
        [
            *(str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2", f"--port={port}"),
            *("--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}"),
            f"--ray-client-server-port={free_port()}",  # defaults are shared with any other Ray here
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(dashboard, head)
        yield Cluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{port}", env, head)
    finally:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        signal.signal(signal.SIGINT, previous)
        shutil.rmtree(temp, ignore_errors=True)


def test_job_on_a_separately_started_cluster_leaves_it_running(cluster, tmp_path):
    write_store(tmp_path / "s.zarr", SHARDS, splits=VAL)
    script = [sys.executable, str(ROOT / "scripts" / "train_cluster.py")]
    config = ["--config", str(ROOT / "pipelines" / "cluster-local.yaml")]
    # Relative paths from another directory: the job must resolve them here, not in its working dir copy.
    paths = ["data.store=s.zarr", "output_dir=out"]
    done = subprocess.run(
        [*script, *config, *TINY, *paths],
        cwd=tmp_path,
        env=cluster.env | {"RAY_ADDRESS": cluster.address},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    out = tmp_path / "out"
    name = re.search(r"job SUCCEEDED: Ray Train run '(\S+)'", done.stdout).group(1)
    run_dir = out / "ray_results" / name
    assert f"checkpoints: {run_dir}\n" in done.stdout
    checkpoints = sorted(run_dir.glob("checkpoint_*/checkpoint.ckpt"))
    assert len(checkpoints) == 2  # steps 2 and 4, ray.num_to_keep=2

    uri = f"sqlite:///{out}/mlflow.db"
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("neurok").experiment_id])
    assert f"MLflow: run {run.info.run_id} in {uri}, experiment 'neurok'" in done.stdout
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(STEPS)) and run.data.params["launcher"] == "ray"
    assert run.data.tags["checkpoint.last"] == str(checkpoints[-1])

    # The script did not stop the cluster it did not start.
    assert cluster.head.poll() is None
    status = subprocess.run(
        [str(BIN / "ray"), "status", f"--address={cluster.gcs}"],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0 and "1 node_" in status.stdout, status.stdout + status.stderr
