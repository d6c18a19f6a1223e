"""Sweeps: the config, the Pareto front, the pipeline-config defaults, and the CI sweep end to end.
A killed trial's restart is in test_tune_restart.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.samplers import TPESampler
from ray.tune.search.optuna import OptunaSearch

from neurok.cli.main import main
from neurok.config import config_path, load_config
from neurok.errors import ConfigError
from neurok.track.registry import CHALLENGER
from neurok.tune.config import Objective, TuneConfig
from neurok.tune.report import markdown, pareto_front
from neurok.tune.sweep import close_unreported_runs, report_count
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


def test_pareto_front_keeps_ties_and_an_undominated_stopped_trial():
    objectives = [Objective("val/chamfer_l1"), Objective("val/ms_per_frame")]
    rows = [
        {"state": "completed", "val/chamfer_l1": 0.10, "val/ms_per_frame": 5.0},
        {"state": "completed", "val/chamfer_l1": 0.10, "val/ms_per_frame": 5.0},  # a tie: both stay
        {"state": "stopped early", "val/chamfer_l1": 0.30, "val/ms_per_frame": 1.0},  # the fastest
        {"state": "completed", "val/chamfer_l1": 0.20, "val/ms_per_frame": 5.0},  # worse than 0, as fast
        {"state": "stopped early", "val/chamfer_l1": 0.30, "val/ms_per_frame": 2.0},  # slower than 2
        {"state": "completed", "val/chamfer_l1": 0.10, "val/ms_per_frame": float("inf")},  # rollout failed
        {"state": "failed", "val/chamfer_l1": 0.05},  # no objectives measured: takes no part
    ]
    assert pareto_front(rows, objectives) == [0, 1, 2]
    table = markdown([r | {"pareto": i in (0, 1, 2)} for i, r in enumerate(rows)], ["state", "pareto"])
    assert table.splitlines()[4] == "| stopped early | True |"


def test_asha_clock_needs_whole_validation_intervals():
    assert report_count(8, 2) == 5  # 4 validations and the final report
    with pytest.raises(ConfigError, match="multiple of trainer.val_every_n_steps"):
        report_count(9, 2)


def test_runs_of_trials_that_never_reported_are_closed(tmp_path):
    """A trial killed before its first report leaves its child run RUNNING: the sweep marks it FAILED,
    and leaves finished children and other sweeps' runs alone."""
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("sweep")
    parent, other = (client.create_run(experiment).info.run_id for _ in range(2))
    child = lambda p: client.create_run(experiment, tags={"mlflow.parentRunId": p}).info.run_id  # noqa: E731
    orphan, finished, elsewhere = child(parent), child(parent), child(other)
    client.set_terminated(finished)
    assert close_unreported_runs(client, parent) == [orphan]
    status = {r: client.get_run(r).info.status for r in (orphan, finished, elsewhere, parent)}
    assert status == {orphan: "FAILED", finished: "FINISHED", elsewhere: "RUNNING", parent: "RUNNING"}


def test_pipeline_config_defaults(tmp_path, monkeypatch):
    """eval, simulate and the sweep's registration read pipelines/<name>.yaml unless given a file."""
    assert config_path(None, "eval") == Path("pipelines/eval.yaml")
    assert config_path("mine.yaml", "eval") == Path("mine.yaml")
    monkeypatch.chdir(tmp_path)  # outside the repository: the schema's defaults
    assert config_path(None, "simulate") is None and config_path("", "registry") is None


@pytest.mark.e2e
def test_ci_sweep_searches_with_optuna_stops_early_and_registers_the_best(tmp_path, monkeypatch):
    """tune/ci.yaml as CI runs it: 4 trials, Optuna TPE, ASHA, 2 at a time; prints its wall time."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    store = write_store(tmp_path / "s.zarr", (4, 4, 4), splits={3: "val", 7: "val", 5: "test", 10: "test"})
    start = time.perf_counter()
    assert main(["tune", "tune/ci.yaml", f"store={store}", f"output_dir={tmp_path}/tune"]) == 0
    print(f"tune/ci.yaml: 4 trials in {time.perf_counter() - start:.0f} s")

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ci_sweep").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert all("model.width" in c.data.params and "checkpoint.last" in c.data.tags for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/summary.md", "sweep/parallel_coordinates.png", "sweep/trials.json"} <= artifacts
    trials = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "sweep/trials.json", str(tmp_path))).read_text()
    )

    # Optuna's TPE study proposed exactly the configs the trials ran, inside the search space
    cfg = load_config(TuneConfig, "tune/ci.yaml")
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(tmp_path / "tune" / "ray_results" / "ci_sweep"))
    assert isinstance(searcher._ot_study.sampler, TPESampler)
    proposed = {trial_id: trial.params for trial_id, trial in searcher._ot_trials.items()}
    assert proposed == {t["trial_id"]: {name: t[name] for name in cfg.space} for t in trials}
    for params in proposed.values():
        for name, dim in cfg.space.items():
            if dim.kind == "choice":
                assert params[name] in dim.values
            else:
                assert dim.low <= params[name] <= dim.high

    # ASHA stopped at least one trial; every trial has all objectives at its last report
    states = [t["state"] for t in trials]
    assert "stopped early" in states and "completed" in states
    objectives = [o.metric for o in cfg.objectives]
    assert all(t[m] is not None for t in trials for m in objectives)
    front = pareto_front(trials, cfg.objectives)
    assert [t["pareto"] for t in trials] == [i in front for i in range(len(trials))]
    summary = Path(client.download_artifacts(parent.info.run_id, "sweep/summary.md", str(tmp_path)))
    assert "stopped early" in summary.read_text()

    best = parent.data.tags["sweep.best_run_id"]
    completed = [t for t in trials if t["state"] == "completed"]
    assert best == min(completed, key=lambda t: t[cfg.target.metric])["run_id"]
    version = client.get_model_version_by_alias("neurok", CHALLENGER)
    assert version.run_id == best and "eval.test/chamfer_l1" in version.tags
    assert version.tags["promotion.decision"] in ("promoted", "rejected")
    assert client.list_artifacts(best, "eval")  # `neurok eval` of the registered version, on its run


def test_parallel_coordinates_take_a_metric_no_trial_reported_without_a_warning():
    import warnings

    from neurok.tune.report import parallel_coordinates

    rows = [
        {"trial_id": "a", "state": "completed", "lr": 1e-3, "val/chamfer_l1": 0.2, "test/ik": None},
        {"trial_id": "b", "state": "stopped", "lr": 3e-3, "val/chamfer_l1": None, "test/ik": None},
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.nanmin of the empty column warned (issue 20)
        fig = parallel_coordinates(rows, ["lr", "val/chamfer_l1", "test/ik"], "val/chamfer_l1")
    lines = fig.axes[0].get_lines()
    first = lines[0].get_ydata()
    assert len(lines) == 2 and list(first[:2]) == [0.0, 0.0] and np.isnan(first[2])  # no value: a gap
