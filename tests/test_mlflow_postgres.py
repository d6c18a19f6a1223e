"""MLflow tracking + registry on a real PostgreSQL server (scripts/mlflow_server.py), end to end.

Starts PostgreSQL and `mlflow server` on free 127.0.0.1 ports in a temp folder, logs a run, registers
a pyfunc model, moves the `champion` alias, loads `models:/NAME@champion` back through the server,
checks the rows really are in PostgreSQL, and tears everything down even when a step fails.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mlflow_server", ROOT / "scripts" / "mlflow_server.py")
srv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(srv)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        srv.unavailable_reason() is not None,
        reason=f"{srv.unavailable_reason()} (.ci/run installs Debian's postgresql)",
    ),
]


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="neurok-mlflow-pg-"))
    os.chmod(root, 0o711)  # the postgres system user (when we are root) must reach pgdata inside
    password = secrets.token_urlsafe(16)  # this test's own; handed over through the environment only
    pg = srv.Postgres(root / "pg", srv.free_port(), password=password)
    proc = None
    try:
        pg.start()
        port = srv.free_port()
        proc = srv.start_mlflow(pg.dsn, root / "artifacts", port, pg.client_env(), log=root / "mlflow.log")
        url = f"http://127.0.0.1:{port}"
        srv.wait_healthy(url, proc)
        yield {"url": url, "pg": pg, "proc": proc, "password": password, "artifacts": root / "artifacts"}
    finally:
        try:
            if proc is not None:
                srv.stop_process_group(proc)
        finally:
            pg.stop()
            shutil.rmtree(root, ignore_errors=True)


def _pg_rows(pg, password: str, sql: str) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1", port=pg.port, user=srv.DB_USER, dbname=srv.DB_NAME, password=password
    )
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


class Scale:
    """A stand-in simulator package: multiplies by a factor stored in an artifact."""

    def load_context(self, context):
        self.factor = float(Path(context.artifacts["factor"]).read_text())

    def predict(self, context, model_input, params=None):
        return model_input * self.factor


def test_track_register_and_pull_through_postgres(server, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    monkeypatch.chdir(tmp_path)  # anything written to the CWD by mistake lands in the temp dir
    mlflow.set_tracking_uri(server["url"])
    mlflow.set_experiment("neurok-pg-test")

    report = tmp_path / "report.txt"
    report.write_text("chamfer_l2 0.0123\n")
    factor = tmp_path / "factor.txt"
    factor.write_text("3.0")
    name = "neurok-pg-test"

    model_cls = type("ScaleModel", (Scale, mlflow.pyfunc.PythonModel), {})
    with mlflow.start_run(run_name="pg") as run:
        mlflow.log_params({"latent_dim": 16, "lr": 1e-3})
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            mlflow.log_metric("train_loss", loss, step=step)
        mlflow.log_artifact(str(report), artifact_path="eval")
        mlflow.log_dict({"gates": "passed"}, "eval/summary.json")
        info = mlflow.pyfunc.log_model(
            name="simulator",
            python_model=model_cls(),
            artifacts={"factor": str(factor)},
            input_example=pd.DataFrame({"x": [1.0, 2.0]}),
            registered_model_name=name,
        )

    # artifacts are proxied by the server into its destination folder (clients need no storage access)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list(server["artifacts"].rglob("report.txt"))
    assert len(stored) == 1 and stored[0].read_text() == report.read_text()
    back = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="eval/report.txt", dst_path=str(tmp_path / "back")
    )
    assert Path(back).read_text() == report.read_text()

    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"latent_dim": "16", "lr": "0.001"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1.0, 0.5, 0.25]

    version = info.registered_model_version
    client.set_registered_model_alias(name, "champion", version)
    assert client.get_model_version_by_alias(name, "champion").version == str(version)
    (tmp_path / "champion").mkdir()
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion", dst_path=str(tmp_path / "champion"))
    out = model.predict(pd.DataFrame({"x": [1.0, 2.0]}))
    assert list(out["x"]) == [3.0, 6.0]

    # the rows are in PostgreSQL itself, not in some fallback store
    pw = server["password"]
    assert _pg_rows(server["pg"], pw, "SELECT name FROM registered_models") == [(name,)]
    aliases = _pg_rows(server["pg"], pw, "SELECT alias, version FROM registered_model_aliases")
    assert aliases == [("champion", int(version))]
    assert _pg_rows(server["pg"], pw, f"SELECT status FROM runs WHERE run_uuid = '{run.info.run_id}'") == [
        ("FINISHED",)
    ]


def test_credentials_stay_off_the_command_line(server):
    cmdline = Path(f"/proc/{server['proc'].pid}/cmdline").read_bytes().decode()
    assert server["password"] not in cmdline
    assert "postgresql" not in cmdline  # the DSN comes from MLFLOW_BACKEND_STORE_URI
    environ = Path(f"/proc/{server['proc'].pid}/environ").read_bytes().split(b"\0")
    assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ


@pytest.mark.slow
def test_train_register_and_pull_the_simulator_through_postgres(server, tmp_path, monkeypatch):
    """The real flow against the server: a tiny `neurok train`, the simulator package registered and
    promoted, then `neurok registry pull` and a prediction in a fresh process."""
    import json
    import subprocess
    import sys

    from neurok.cli.main import main
    from neurok.config import load_config
    from neurok.eval.config import SimulateConfig
    from neurok.model.checkpoint import read_checkpoint
    from neurok.track.registry import RegistryConfig, promote, register
    from neurok.train.local import train
    from test_loader_stores import write_store
    from test_registry import SIMULATE, mesh_input
    from test_train import tiny_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])
    store = write_store(tmp_path / "s.zarr", (4, 4), splits={3: "val"})
    cfg = tiny_config(
        store,
        tmp_path / "out",
        "run_name=pg-reg",
        "trainer.max_steps=4",
        "trainer.plot_objects=0",
        "experiment=neurok-pg-sim",
    )
    monkeypatch.chdir(tmp_path)  # the config is read; anything written to the CWD lands in the temp dir
    result = train(cfg)
    simulate_cfg = load_config(SimulateConfig, ROOT / "pipelines" / "simulate.yaml", SIMULATE)
    report = {"test/chamfer_l1": 0.1, "test/ik_chamfer_l1": 0.1, "test/energy_drift": 0.01}
    version = register(
        server["url"],
        result.run_id,
        "neurok-pg-sim",
        read_checkpoint(result.last_checkpoint),
        "preset: tiny\n",
        {"path": store, "content_hash": "x"},
        report,
        simulate_cfg,
    )
    assert promote(server["url"], f"neurok-pg-sim/{version.version}", RegistryConfig()).promoted

    out = tmp_path / "pulled"
    assert main(["registry", "pull", "neurok-pg-sim@champion", "--out", str(out)]) == 0
    model_dir = next(p.parent for p in out.rglob("MLmodel"))
    inputs = {k: v.tolist() for k, v in mesh_input(1).items()}
    code = (
        "import sys, json, numpy as np, mlflow\n"
        "x = {k: np.asarray(v, np.int64 if k == 'faces' else float)\n"
        "     for k, v in json.loads(sys.argv[2]).items()}\n"
        "print(mlflow.pyfunc.load_model(sys.argv[1]).predict(x, params={'frames': 2})['vertices'].shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the folder alone suffices
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), json.dumps(inputs)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "(3, 42, 3)"
    assert list(server["artifacts"].rglob("model.ckpt"))  # the package went through the proxied store
