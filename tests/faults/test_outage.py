"""Outage: the MLflow tracking server (a real `mlflow server` on SQLite) is stopped during training and
started again a few steps later. Training must go on, every step's loss must arrive once the server answers,
and the run must end FINISHED; what could not be logged meanwhile (a validation figure) is a warning.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from mlflow import MlflowClient

from neurok.train.local import train
from test_loader_stores import write_store
from test_mlflow_postgres import srv
from test_train import tiny_config

pytestmark = pytest.mark.slow  # `make faults` (and `make test-full`): ~1 min

DOWN_AT, UP_AT, STEPS = 4, 10, 16


class Outage(pl.Callback):
    """Stops the server after step DOWN_AT and starts it again (same port, same store) after step UP_AT."""

    def __init__(self, start):
        self.start = start
        self.proc = start()

    def on_train_batch_end(self, trainer, *args) -> None:
        trainer.logger.retry_s = 0.5  # retry within the test's few seconds of outage, not every 30 s
        if trainer.global_step == DOWN_AT:
            srv.stop_process_group(self.proc)
        elif trainer.global_step == UP_AT:
            self.proc = self.start()


def test_training_rides_out_a_tracking_server_outage(tmp_path, monkeypatch, caplog, record_property):
    store = write_store(tmp_path / "s.zarr", (4, 4, 4, 4), splits={3: "val", 9: "val"})
    port, backend = srv.free_port(), f"sqlite:///{tmp_path}/server.db"
    url = f"http://127.0.0.1:{port}"

    def start():
        proc = srv.start_mlflow(backend, tmp_path / "artifacts", port, log=tmp_path / "mlflow.log")
        srv.wait_healthy(url, proc)
        return proc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    outage = Outage(start)
    try:
        extra = (f"trainer.max_steps={STEPS}", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=8")
        result = train(tiny_config(store, tmp_path / "out", *extra), callbacks=[outage])
    finally:
        srv.stop_process_group(outage.proc)
    client = MlflowClient(backend)
    run = client.get_run(result.run_id)
    steps = sorted({m.step for m in client.get_metric_history(result.run_id, "train/loss")})
    record_property("stage", "outage")
    record_property("outcome", "recovered, nothing lost")
    record_property(
        "message",
        f"server down after step {DOWN_AT}, back after step {UP_AT}: training reached step "
        f"{result.global_step}; {len(steps)} of {STEPS} steps' losses in MLflow; run {run.info.status}",
    )
    assert result.global_step == STEPS and run.info.status == "FINISHED"
    assert steps == list(range(1, STEPS + 1)) or steps == list(range(STEPS))
    assert "does not answer" in caplog.text and "answers again" in caplog.text
    assert "reconstructions/step_0000008.png not logged" in caplog.text  # the validation in the outage
    assert not (tmp_path / "out" / "unsent-metrics").exists()
