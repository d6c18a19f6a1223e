"""MLflow tracking: what one `neurok train` run leaves in a temporary SQLite tracking store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from neurok.cli.main import main
from neurok.data.store import Store
from neurok.track import dataset_fingerprint, tracking_uri
from test_loader_stores import write_store

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

torch.set_num_threads(1)


def test_train_cli_run_in_mlflow(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # a tiny run lasts seconds
    store = write_store(tmp_path / "s.zarr", (4, 4, 4, 4), splits={3: "val", 9: "val"})
    code = main(
        [
            "train",
            "pipelines/smoke.yaml",
            f"data.store={store}",
            f"output_dir={tmp_path}/out",
            "run_name=cli",
            "trainer.max_steps=12",
            "trainer.val_every_n_steps=6",
            "trainer.checkpoint_every_n_steps=6",
            "trainer.log_every_n_steps=2",
            "trainer.plot_objects=2",
            "trainer.system_metrics=true",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("neurok").experiment_id])[0]
    assert run.info.run_id in printed and run.info.status == "FINISHED" and run.info.run_name == "cli"

    params = run.data.params
    assert params["model.width"] == "64" and params["trainer.max_steps"] == "12"  # the resolved config
    assert (
        params["dataset.content_hash"] == dataset_fingerprint(store, Store(store).shards, 16)["content_hash"]
    )
    assert run.data.tags["dataset.path"] == store

    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 8, 10, 12] or steps == [1, 3, 5, 7, 9, 11]
    for key in ("val/loss", "val/chamfer_l1", "val/chamfer_l2", "val/vertex_error", "val/kl"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key
    shares = [m.value for m in client.get_metric_history(run.info.run_id, "val/shape_share")]
    assert len(shares) == 2 and all(-10 < s < 1 for s in shares)  # over the whole validation set, each time
    assert f"val/shape_share: {shares[-1]:.5f}" in printed
    opened = Store(store)
    val_types = {opened.object_type_of(i) for i in range(len(opened.index)) if opened.split_of(i) == "val"}
    typed = {k.rsplit("/", 1)[1] for k in run.data.metrics if k.startswith("val/shape_share/")}
    assert typed == val_types != set()  # one share per object type the validation split holds
    for key in (
        "latent/explained_own",
        "latent/explained_shuffled",
        "latent/active_dims",
        "latent/jacobian_sv_1",
    ):
        assert len(client.get_metric_history(run.info.run_id, key)) == 2, key  # at every validation
    assert any(k.startswith("system/cpu") for k in run.data.metrics)
    assert client.get_metric_history(run.info.run_id, "lr-AdamW/pg1")

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints.json", "reconstructions"} <= artifacts
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")]
    assert plots == ["reconstructions/step_0000006.png", "reconstructions/step_0000012.png"]
    refs = json.loads(
        Path(client.download_artifacts(run.info.run_id, "checkpoints.json", str(tmp_path))).read_text()
    )
    assert refs["last"]["step"] == 12 and refs["last"]["path"] == run.data.tags["checkpoint.last"]
    assert refs["best"]["path"].endswith("best.ckpt") and refs["best"]["score"] > 0


def test_tracking_uri_defaults_to_sqlite_in_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_dataset_hash_follows_shard_content():
    shards = [{"id": 1, "sha256": "b"}, {"id": 0, "sha256": "a"}]
    a = dataset_fingerprint("x", shards, 3)
    assert a == dataset_fingerprint("x", shards[::-1], 3)
    assert (
        a["content_hash"]
        != dataset_fingerprint("x", [{"id": 0, "sha256": "a"}, {"id": 1, "sha256": "c"}], 3)["content_hash"]
    )
