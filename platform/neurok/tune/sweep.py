"""`neurok tune`: a Ray Tune sweep of the training function, tracked as one MLflow parent run.

Ray (RAY_ADDRESS, else a local instance of resources.num_cpus with a short temp dir, stopped after)
  -> Tuner(run_trial): random or Optuna TPE search, ASHA, max concurrency from the cluster's CPUs
  -> summary: table, Pareto front, parallel-coordinates plot on the parent run
  -> the best trial (by `target`) measured on the test split, registered, promoted if its gates pass
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from neurok.config import config_path, load_config, to_dict, to_yaml
from neurok.data.store import Store
from neurok.errors import ConfigError, NeurokError
from neurok.eval.config import SimulateConfig
from neurok.eval.evaluate import evaluate
from neurok.eval.report import log_to_mlflow, table_rows, write_report
from neurok.model.checkpoint import load_model, read_checkpoint
from neurok.track import dataset_fingerprint, log_run_inputs, open_run, tracking_uri
from neurok.track.registry import Decision, RegistryConfig, promote, register
from neurok.train.config import load_train_config
from neurok.tune.config import Dimension, Kind, TuneConfig
from neurok.tune.objectives import measure
from neurok.tune.report import markdown, parallel_coordinates, pareto_front
from neurok.tune.trial import run_trial

log = logging.getLogger(__name__)

COMPLETED, STOPPED, FAILED = "completed", "stopped early", "failed"  # how a trial ended


@dataclass
class SweepResult:
    parent_run_id: str
    rows: list[dict]  # one per trial
    pareto: list[str]  # trial ids on the Pareto front
    best: dict | None
    test_report: dict[str, float]
    decision: Decision | None
    wall_s: float


def sampler(dim: Dimension):
    if dim.kind == Kind.choice:
        return tune.choice(list(dim.values))
    if dim.kind == Kind.uniform:
        return tune.uniform(dim.low, dim.high)
    if dim.kind == Kind.loguniform:
        return tune.loguniform(dim.low, dim.high)
    return tune.randint(int(dim.low), int(dim.high))


def report_count(max_steps: int, val_every_n_steps: int) -> int:
    """ASHA's max_t: one report per validation, plus the final one that marks a trial completed (so ASHA
    never stops a trial at its last validation, before it has written its checkpoint reference)."""
    if val_every_n_steps <= 0 or max_steps % val_every_n_steps:
        raise ConfigError(
            f"tune: trainer.max_steps ({max_steps}) must be a multiple of trainer.val_every_n_steps "
            f"({val_every_n_steps}): a trial's last report must measure its final model"
        )
    return max_steps // val_every_n_steps + 1


def trial_row(result) -> dict:
    """A trial's config and last reported metrics (a stopped trial's are from the report ASHA stopped it
    at), and how it ended."""
    m = result.metrics or {}
    state = FAILED if result.error else COMPLETED if "checkpoint" in m else STOPPED
    return {
        "trial_id": m.get("trial_id", ""),
        **result.config,
        **{k: v for k, v in m.items() if k.startswith(("val/", "test/"))},
        "reports": m.get("training_iteration"),
        "state": state,
        "run_id": m.get("run_id", ""),
        "checkpoint": m.get("checkpoint", ""),
        "error": str(result.error)[:200] if result.error else "",
    }


def search_algorithm(cfg: TuneConfig, metric: str, mode: str):
    if cfg.search.algorithm == "random":
        return BasicVariantGenerator(random_state=cfg.search.seed)
    if cfg.search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # needs optuna

        return OptunaSearch(metric=metric, mode=mode, seed=cfg.search.seed)
    raise ConfigError(f"search.algorithm must be random or optuna, got {cfg.search.algorithm!r}")


def _start_ray(cfg: TuneConfig) -> str | None:
    """Connect to RAY_ADDRESS, or start a bounded local instance; returns its temp dir to remove after."""
    if ray.is_initialized():
        return None
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False)
        return None
    temp = tempfile.mkdtemp(prefix="nkray-", dir="/tmp")  # short: Ray's socket paths are length-limited
    ray.init(num_cpus=cfg.resources.num_cpus, _temp_dir=temp, log_to_driver=False)
    return temp


def run_sweep(cfg: TuneConfig) -> SweepResult:
    if not cfg.space:
        raise ConfigError("tune: the config has an empty `space`; see tune/latent_arch.yaml")
    start = time.perf_counter()
    train_overrides = [*cfg.train_overrides, *([f"data.store={cfg.store}"] if cfg.store else [])]
    train_cfg = load_train_config(cfg.train_config, train_overrides)
    output_dir = Path(cfg.output_dir).resolve()
    # Trials run in Ray's own working folders: every path they read must be absolute.
    store_path = train_cfg.data.store
    store_path = store_path if "://" in store_path else str(Path(store_path).resolve())
    trial_cfg = to_dict(cfg) | {
        "train_config": str(Path(cfg.train_config).resolve()),
        "train_overrides": [*train_overrides, f"data.store={store_path}"],
        "output_dir": str(output_dir),
    }
    uri = tracking_uri(output_dir)
    parent = open_run(uri, cfg.name, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}", output_dir)
    store = Store(train_cfg.data.store)
    dataset = dataset_fingerprint(store.path, store.shards, len(store))
    log_run_inputs(uri, parent, to_dict(cfg), to_yaml(cfg), dataset)

    reports = report_count(train_cfg.trainer.max_steps, train_cfg.trainer.val_every_n_steps)
    target, mode = cfg.target.metric, str(cfg.target.mode)
    scheduler = None
    if cfg.scheduler.asha:
        scheduler = ASHAScheduler(
            max_t=reports,
            grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor,
        )
    # Each report checkpoints; with num_to_keep Tune then snapshots its state each time and warns when that
    # happens within 5 s. A local snapshot takes milliseconds, and short trials report that often.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    temp = _start_ray(cfg)
    try:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        concurrent = cfg.resources.max_concurrent or max(1, int(cpus // cfg.resources.cpus_per_trial))
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, cfg_dict=trial_cfg, uri=uri, parent_run_id=parent),
            {"CPU": cfg.resources.cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={name: sampler(dim) for name, dim in cfg.space.items()},
            tune_config=tune.TuneConfig(
                metric=target,
                mode=mode,
                num_samples=cfg.search.num_samples,
                search_alg=search_algorithm(cfg, target, mode),
                scheduler=scheduler,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=cfg.name,
                storage_path=str(output_dir / "ray_results"),
                failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),  # a restart needs only the latest
                verbose=0,
            ),
        )
        grid = tuner.fit()
    finally:
        if temp is not None:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)

    rows = [trial_row(result) for result in grid]
    client = MlflowClient(uri)
    for row in rows:  # a trial that ASHA stopped or that failed ended mid-run: close its MLflow run
        if row["run_id"] and row["state"] != COMPLETED:
            client.set_terminated(row["run_id"], "FAILED" if row["state"] == FAILED else "KILLED")
    close_unreported_runs(client, parent)
    if rows and all(r["error"] for r in rows):
        raise NeurokError(f"tune: every trial failed; the first: {rows[0]['error']}")
    front = pareto_front(rows, cfg.objectives)
    finished = [r for r in rows if r["state"] == COMPLETED and r.get(target) is not None]
    sign = 1 if mode == "min" else -1
    best = min(finished, key=lambda r: sign * r[target]) if finished else None
    _log_summary(uri, parent, cfg, rows, [rows[i]["trial_id"] for i in front], best)

    test_report, decision = {}, None
    if best is not None and cfg.register:
        test_report, decision = _register_best(uri, cfg, best, dataset, store)
        client.log_dict(parent, {"best": best, "test": test_report}, "sweep/best.json")
    wall = time.perf_counter() - start
    client.log_metric(parent, "sweep/wall_s", wall)
    client.set_terminated(parent)
    return SweepResult(parent, rows, [rows[i]["trial_id"] for i in front], best, test_report, decision, wall)


def close_unreported_runs(client: MlflowClient, parent: str) -> list[str]:
    """Mark FAILED the sweep's child runs still RUNNING: trials that died before their first report, so
    their run id never reached Tune. Returns their ids."""
    experiment = client.get_run(parent).info.experiment_id
    orphans = client.search_runs(
        [experiment], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
    )
    for run in orphans:
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in orphans]


def _log_summary(uri: str, parent: str, cfg: TuneConfig, rows: list[dict], front: list[str], best) -> None:
    client = MlflowClient(uri)
    objectives = [o.metric for o in cfg.objectives]
    for r in rows:
        r["pareto"] = r["trial_id"] in front
    columns = ["trial_id", *cfg.space, *objectives, "reports", "state", "pareto"]
    client.log_text(parent, markdown(rows, columns), "sweep/summary.md")
    client.log_text(parent, json.dumps(rows, indent=2, default=str), "sweep/trials.json")
    client.log_figure(
        parent,
        parallel_coordinates(rows, [*cfg.space, *objectives], cfg.target.metric),
        "sweep/parallel_coordinates.png",
    )
    client.set_tag(parent, "sweep.pareto_front", ",".join(front))
    if best is not None:
        client.set_tag(parent, "sweep.best_trial", best["trial_id"])
        client.set_tag(parent, "sweep.best_run_id", best["run_id"])


def _register_best(uri: str, cfg: TuneConfig, best: dict, dataset: dict, store: Store):
    """The best trial measured on the test split, registered (challenger) and promoted if its gates pass."""
    model = load_model(best["checkpoint"])
    report = measure(model, store, "test", cfg.eval)
    if cfg.full_eval:  # the registered version's evaluation artifacts live on its run
        eval_cfg = dataclasses.replace(
            cfg.eval, split="test", out_dir=tempfile.mkdtemp(prefix="neurok-eval-")
        )
        result = evaluate(model, store, eval_cfg)
        files = write_report(result, eval_cfg, store.path, best["checkpoint"])
        mlflow.set_tracking_uri(uri)  # log_to_mlflow uses the default client
        log_to_mlflow(best["run_id"], table_rows(result.cases), result.speed, files)
        shutil.rmtree(eval_cfg.out_dir, ignore_errors=True)
    registry = load_config(RegistryConfig, config_path(cfg.registry_config, "registry"))
    simulate_cfg = load_config(SimulateConfig, config_path(cfg.simulate_config, "simulate"))
    config_yaml = MlflowClient(uri).download_artifacts(best["run_id"], "config.yaml", tempfile.mkdtemp())
    identity = {**dataset, "normalisation": store.attrs.get("normalisation", {})}
    version = register(
        uri,
        best["run_id"],
        registry.name,
        read_checkpoint(best["checkpoint"]),
        Path(config_yaml).read_text(),
        identity,
        report,
        simulate_cfg,
    )
    shutil.rmtree(Path(config_yaml).parent, ignore_errors=True)
    decision = promote(uri, f"{registry.name}/{version.version}", registry)
    log.info("registered %s version %s: %s", registry.name, version.version, decision.reason)
    return report, decision
