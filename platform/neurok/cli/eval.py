"""`neurok eval --model CKPT|models:/NAME@ALIAS --data STORE [key=value ...]`: a model's metrics table."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "eval",
        help="evaluate a trained model: reconstruction, IK vs baselines, rollouts, speed; table + videos",
        description="Overrides are dotted key=value pairs of pipelines/eval.yaml, e.g. split=test objects=2 "
        "dynamics.ik.iterations=100 out_dir=outputs/eval. Logs to MLflow when mlflow_run_id is set or a run "
        "is active (or MLFLOW_RUN_ID is set).",
    )
    parser.add_argument(
        "--model", required=True, help="training checkpoint, pulled model folder, or models:/NAME@ALIAS"
    )
    parser.add_argument("--data", required=True, help="the 4D store to evaluate on")
    parser.add_argument(
        "--config", default=None, help="pipeline YAML (default: pipelines/eval.yaml if present)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from mlflow.tracking import MlflowClient

    from neurok.config import config_path, load_config
    from neurok.data.store import Store
    from neurok.eval.config import EvalConfig
    from neurok.eval.evaluate import evaluate
    from neurok.eval.report import log_to_mlflow, table_rows, write_report
    from neurok.model.checkpoint import load_model, training_run
    from neurok.threads import limit_threads
    from neurok.track.registry import model_files

    cfg = load_config(EvalConfig, config_path(args.config, "eval"), [*args.overrides, f"data={args.data}"])
    if cfg.threads:
        limit_threads(cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:  # where a models:/ URI is downloaded
        checkpoint = model_files(args.model, tmp)[0]
        model, trained_by = load_model(checkpoint), training_run(checkpoint)
    result = evaluate(model, Store(cfg.data), cfg)
    files = write_report(result, cfg, cfg.data, args.model)
    print(files["summary"].read_text())
    print(f"every metric per (object type, split): {files['table']}")
    for kind, file in files.items():
        print(f"  {kind}: {file}")
    run_id, uri = _mlflow_run(cfg, trained_by)
    if run_id:
        log_to_mlflow(run_id, table_rows(result.cases), result.speed, files, result.latent, uri)
        if uri:  # the child run we opened
            MlflowClient(uri).set_terminated(run_id)
        print(f"logged to MLflow run {run_id} ({uri or 'MLFLOW_TRACKING_URI'}); browse it: make mlflow-ui")
    return 0


def _mlflow_run(cfg, trained_by: dict | None) -> tuple[str, str | None]:
    """(run id, tracking URI) to log to: mlflow_run_id, else the active run, else a new child of the run
    that trained the model (when its store is reachable); ("", None) for none."""
    run_id = cfg.mlflow_run_id or _active_run_id()
    if run_id or trained_by is None:
        return run_id, None
    from mlflow.exceptions import MlflowException

    from neurok.eval.report import child_run

    uri, parent = trained_by["tracking_uri"], trained_by["run_id"]
    missing = uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file()
    try:
        if not missing:  # (MLflow would create an empty database there)
            return child_run(parent, uri, f"eval-{Path(cfg.out_dir).name}"), uri
    except MlflowException:
        pass
    print(f"not logged to MLflow: training run {parent} is not in {uri}; mlflow_run_id=ID chooses a run")
    return "", None


def _active_run_id() -> str:
    """The run this process is inside: an active fluent run, or MLFLOW_RUN_ID (as `mlflow run` sets)."""
    import os

    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else os.environ.get("MLFLOW_RUN_ID", "")
