"""Sweeps: the config, the Pareto front, and a tiny 2-trial sweep end to end (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from neurok.cli.main import main
from neurok.config import load_config
from neurok.track.registry import CHALLENGER
from neurok.tune.config import Objective, TuneConfig
from neurok.tune.report import pareto_front
from neurok.tune.trial import overrides_for
from test_loader_stores import write_store

torch.set_num_threads(1)


def test_sweep_config_and_trial_overrides():
    cfg = load_config(TuneConfig, "tune/latent_arch.yaml")
    assert cfg.space["optim.lr"].kind == "loguniform" and cfg.scheduler.asha
    overrides = overrides_for({"depth": 2, "model.width": 64}, cfg)
    assert overrides == ["model.encoder_depth=2", "model.decoder_depth=2", "model.width=64"]


def test_pareto_front_skips_dominated_and_incomplete_trials():
    objectives = [Objective("a"), Objective("b", "max")]
    rows = [{"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 2.0}, {"a": 2.0, "b": 0.5}, {"a": 0.5}]
    assert pareto_front(rows, objectives) == [0, 1]  # row 2 is dominated by row 0; row 3 lacks b


@pytest.mark.slow
def test_tiny_sweep_nests_runs_and_registers_the_best(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = write_store(tmp_path / "s.zarr", (4, 4, 4), splits={3: "val", 7: "val", 5: "test", 10: "test"})
    code = main(
        [
            "tune",
            "tune/latent_arch.yaml",
            "name=tiny_sweep",
            f"output_dir={tmp_path}/tune",
            "search.algorithm=random",
            "search.num_samples=2",
            f"train_overrides=[preset=tiny,data.store={store},data.num_workers=0,data.points=64,"
            "data.queries=64,data.vertices=32,trainer.max_steps=4,trainer.val_every_n_steps=2,"
            "trainer.checkpoint_every_n_steps=2,trainer.max_minutes=0,trainer.progress_bar=false,"
            "trainer.plot_objects=0,trainer.system_metrics=false]",
            "eval.surface_samples=128",
            "eval.shape.points=64",
            "eval.shape.max_queries=64",
            "eval.dynamics.reduction.samples=16",
            "eval.dynamics.reduction.max_dims=3",
            "eval.dynamics.ik.iterations=10",
            "eval.dynamics.boundary.iterations=10",
            "eval.dynamics.simulator.damping=1.0",
            "simulate_config=pipelines/simulate.yaml",
            "eval.speed=false",
            "eval.renders=0",
            "eval.grid=8",
            "eval.baseline_sequences=4",
        ]
    )
    assert code == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_sweep").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all("model.width" in c.data.params and "checkpoint.last" in c.data.tags for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/summary.md", "sweep/parallel_coordinates.png", "sweep/trials.json"} <= artifacts
    trials = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "sweep/trials.json", str(tmp_path))).read_text()
    )
    assert len(trials) == 2 and any(t["pareto"] for t in trials)
    best = parent.data.tags["sweep.best_run_id"]
    version = client.get_model_version_by_alias("neurok", CHALLENGER)
    assert version.run_id == best and "eval.test/chamfer_l1" in version.tags
    assert version.tags["promotion.decision"] in ("promoted", "rejected")
    assert client.list_artifacts(best, "eval")  # `neurok eval` of the registered version, on its run
