"""`make train-cluster`: submit `neurok train CONFIG launcher=ray` as a Ray job and stream its logs.

- No RAY_ADDRESS: start a local cluster as separate `ray start --block` processes (a head with no CPUs for
  the job driver and the Train controller, plus N worker nodes of 1 CPU each) in a short temp dir, with a
  fresh token for token auth set the same way on every node and on the job client; submit to it; stop
  exactly those processes afterwards (also on Ctrl-C or failure).
- RAY_ADDRESS set (the Jobs/dashboard address of a cluster started separately, e.g. http://127.0.0.1:8265
  through a port-forward; RAY_AUTH_TOKEN for a token-auth cluster): submit there, with this repository as
  the job's working dir and this checkout's `neurok` package on its path; the cluster's `python` provides
  the dependencies. Relative paths of the config (output_dir, data.store, the storage path) are made
  absolute here, so the job writes where this script says, not into its throwaway copy of the working
  dir: on another machine they must be shared paths (see pipelines/cluster-gpu.yaml). A set
  MLFLOW_TRACKING_URI goes to the job too (then every node must reach it). The cluster is left running.

Ctrl-C stops the job; its checkpoints stay, and the same command resumes it.

Usage: python scripts/train_cluster.py [--config pipelines/cluster-local.yaml] [--nodes 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neurok.errors import ConfigError, NeurokError
from neurok.track import tracking_uri
from neurok.train.config import TrainConfig, load_train_config

# Nothing here imports ray (nor neurok.train.ray_launcher) at module level: Ray reads RAY_AUTH_MODE and
# RAY_AUTH_TOKEN once, when first imported, and the local cluster's token is only known after it starts.

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# What a remote job does not need from the working dir (Ray caps its size; data and runs live on the cluster).
EXCLUDES = [
    *(".git", ".venv", "datasets/out", "outputs", "mlruns", "mlartifacts", "benchmarks/results"),
    *("**/__pycache__", ".pytest_cache", ".ruff_cache", "*.db"),
]
PACKAGE = ROOT / "platform" / "neurok"  # uploaded too: the job runs this checkout's code
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head and `nodes` one-CPU worker nodes, each a `ray start --block` process we own: stopping that
    process stops its node (Ray's reaper), so nothing else running Ray on this machine is touched."""

    def __init__(self, nodes: int):
        self.nodes = nodes
        self.temp = tempfile.mkdtemp(
            prefix="nrc", dir="/tmp"
        )  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        token = secrets.token_hex(32)
        self.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's default niceness of 15 puts workers below every other process here: a preempted DDP
            # rank stalls all ranks, and a task runs slower than the same work in a process pool.
            "RAY_worker_niceness": "0",
        }
        self.procs: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, *args: str) -> None:
        log = open(Path(self.temp) / f"node-{len(self.procs)}.log", "w")  # noqa: SIM115 (closed with the process)
        self.procs.append(
            subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", *args],
                env=os.environ | self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the job before the nodes
            )
        )

    def start(self) -> None:
        os.environ.update(self.env)  # the job client in this process authenticates with the same token
        # A shell running us in the background ignores SIGINT, and so would our nodes: `stop` needs it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self._start(
            "--head",
            f"--port={self.port}",
            "--num-cpus=0",
            f"--temp-dir={self.temp}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
        )
        self._wait_for_dashboard()
        for i in range(self.nodes):
            # Its own temp dir: nodes sharing one would each forward every log line to the driver.
            node_temp = Path(self.temp) / f"n{i}"
            self._start(f"--address=127.0.0.1:{self.port}", "--num-cpus=1", f"--temp-dir={node_temp}")
        print(
            f"local Ray cluster: head + {self.nodes} x 1-CPU nodes, dashboard {self.address}, in {self.temp}"
        )

    def _wait_for_dashboard(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise NeurokError(f"ray start --head exited; see {self.temp}/node-0.log")
            try:
                socket.create_connection(("127.0.0.1", self.dashboard_port), timeout=1).close()
                return
            except OSError:
                time.sleep(1)
        raise NeurokError(f"the Ray dashboard did not come up in {timeout:.0f} s; see {self.temp}/node-0.log")

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, the head last
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # --block exits cleanly and its reaper stops the node
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


async def stream_logs(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def submit(address: str, entrypoint: str, runtime_env: dict) -> str:
    """Submit, stream the logs until the job ends, and return its final status (Ctrl-C stops the job)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    print(f"submitted Ray job {job_id}: {entrypoint}", flush=True)
    try:
        asyncio.run(stream_logs(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopping Ray job {job_id} (checkpoints are kept; rerun to resume)", flush=True)
        client.stop_job(job_id)
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        time.sleep(1)
    return status


def remote_job(config: str, overrides: list[str], cfg: TrainConfig, env_vars: dict) -> tuple[str, dict]:
    """The entrypoint and runtime env of the job on a cluster started elsewhere."""
    from neurok.train.ray_launcher import storage_path, with_absolute_paths

    cfg = with_absolute_paths(cfg)
    paths = [
        f"output_dir={cfg.output_dir}",
        f"data.store={cfg.data.store}",
        f"ray.storage_path={storage_path(cfg)}",
    ]
    command = ["python", "-m", "neurok.cli.main", "train", config_in_repo(config), *overrides, *paths]
    if uri := os.environ.get(
        "MLFLOW_TRACKING_URI"
    ):  # where the user points MLflow, not the cluster's default
        env_vars = env_vars | {"MLFLOW_TRACKING_URI": uri}
    runtime_env = {
        "working_dir": str(ROOT),
        "py_modules": [str(PACKAGE)],
        "excludes": EXCLUDES,
        "env_vars": env_vars,
    }
    return shlex.join(command), runtime_env


def config_in_repo(config: str) -> str:
    """The config's path inside the job's working dir (a copy of this repository)."""
    path = Path(config).resolve()
    if not path.is_relative_to(ROOT):
        raise ConfigError(
            f"{config}: with RAY_ADDRESS the config must be inside {ROOT} (the job's working dir)"
        )
    return str(path.relative_to(ROOT))


def local_job(config: str, overrides: list[str]) -> str:
    """Same machine, same files: run from this checkout with this interpreter."""
    command = [sys.executable, "-m", "neurok.cli.main", "train", config, *overrides]
    return f"cd {shlex.quote(str(ROOT))} && " + shlex.join(command)


def report(cfg: TrainConfig, status: str, remote: bool) -> None:
    """Where the checkpoints and the MLflow run are (read from the run's record when this machine sees it)."""
    from neurok.train.ray_launcher import recorded_run, run_name, storage_path, with_absolute_paths

    cfg = with_absolute_paths(cfg)  # what the job trains with: its run name hashes the absolute paths
    name, storage = run_name(cfg), storage_path(cfg)
    try:
        recorded = recorded_run(storage, name)
    except (OSError, ImportError):  # storage this machine cannot read (another filesystem, no credentials)
        recorded = None
    print(f"job {status}: Ray Train run '{name}'")
    print(
        f"  checkpoints: {storage}/{name}" + (" (a path on the cluster)" if remote and not recorded else "")
    )
    if recorded:
        print(
            f"  MLflow: run {recorded['run_id']} in {recorded['tracking_uri']}, experiment '{cfg.experiment}'"
        )
    elif remote:
        print("  MLflow: the run id and tracking URI are in the job log above (as the cluster sees them)")
    else:
        print(f"  MLflow: {tracking_uri(cfg.output_dir)}, experiment '{cfg.experiment}' (make mlflow-ui)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="pipelines/cluster-local.yaml")
    parser.add_argument("--nodes", type=int, default=2, help="local worker nodes (1 CPU each)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    overrides = ["launcher=ray", *args.overrides]
    cfg = load_train_config(args.config, overrides)  # a config error shows before any cluster starts
    env_vars = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "300"}  # worker start-up on a loaded machine

    remote = os.environ.get("RAY_ADDRESS")
    if remote:  # a cluster started elsewhere: submit and leave it running
        if os.environ.get("RAY_AUTH_TOKEN"):  # Ray sends the token only in token mode
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        status = submit(remote, *remote_job(args.config, overrides, cfg, env_vars))
    else:
        cluster = LocalCluster(args.nodes)
        try:
            cluster.start()
            status = submit(cluster.address, local_job(args.config, overrides), {"env_vars": env_vars})
        finally:
            cluster.stop()
            print("local Ray cluster stopped")
    report(cfg, status, bool(remote))
    return 0 if status == "SUCCEEDED" else 1


if __name__ == "__main__":
    sys.exit(main())
