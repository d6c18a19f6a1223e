"""MLflow runs: where they are stored, opening or resuming one, and what is logged with it.

Default store: a local SQLite database and artifact folder under the training output folder
(`<output_dir>/mlflow.db`, `<output_dir>/mlartifacts`), unless MLFLOW_TRACKING_URI names another.
Checkpoints are logged by reference (their paths as tags and in `checkpoints.json`), not copied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from neurok.errors import BadInputError
from neurok.track.logger import UNREACHABLE, reason

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
BATCH = 100  # MLflow's limit on params per log_batch call


def tracking_uri(output_dir: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(output_dir).resolve()}/mlflow.db"


def open_run(
    uri: str, experiment: str, run_name: str, output_dir: str | Path, run_id: str | None = None
) -> str:
    """Resume `run_id` (marking it running again), or create a run in `experiment`; returns the run id."""
    client = MlflowClient(uri)
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            raise BadInputError(
                f"MLflow run {run_id} (named in the checkpoint) is not in the tracking store {uri}; "
                "set MLFLOW_TRACKING_URI to the store it was logged to"
            ) from None
        client.update_run(run_id, status="RUNNING")
        return run_id
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        local = uri.startswith("sqlite:") or uri.startswith("file:")
        location = (Path(output_dir).resolve() / "mlartifacts").as_uri() if local else None
        experiment_id = client.create_experiment(experiment, artifact_location=location)
    return client.create_run(experiment_id, run_name=run_name).info.run_id


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:MAX_PARAM_CHARS]
    return flat


def dataset_fingerprint(path: str, shards: list[dict], n_sequences: int) -> dict:
    """The dataset's identity: its path and a content hash over the per-shard hashes of its manifest."""
    h = hashlib.sha256()
    for shard in sorted(shards, key=lambda s: s["id"]):
        h.update(f"{shard['id']}:{shard['sha256']};".encode())
    return {"path": path, "content_hash": h.hexdigest(), "n_sequences": n_sequences, "n_shards": len(shards)}


def log_run_inputs(uri: str, run_id: str, config: dict, config_yaml: str, dataset: dict) -> None:
    """Params (the resolved config, flattened), the config file, and the dataset's path and hash."""
    client = MlflowClient(uri)
    params = flatten(config) | {f"dataset.{k}": str(v) for k, v in dataset.items()}
    items = sorted(params.items())
    for i in range(0, len(items), BATCH):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i : i + BATCH]])
    client.log_batch(
        run_id,
        tags=[
            RunTag("dataset.path", dataset["path"]),
            RunTag("dataset.content_hash", dataset["content_hash"]),
        ],
    )
    client.log_text(run_id, config_yaml, "config.yaml")


def log_checkpoints(uri: str, run_id: str, checkpoints: dict[str, dict]) -> None:
    """Checkpoints by reference, e.g. {"last": {"path", "step"}, "best": {"path", "score"}}; a warning when
    the tracking server does not answer (the checkpoints themselves are written)."""
    client = MlflowClient(uri)
    tags = [
        RunTag(f"checkpoint.{name}", str(info["path"]))
        for name, info in checkpoints.items()
        if info.get("path")
    ]
    try:
        if tags:
            client.log_batch(run_id, tags=tags)
        client.log_text(run_id, json.dumps(checkpoints, indent=2, default=str), "checkpoints.json")
    except UNREACHABLE as exc:
        log.warning(
            "MLflow at %s: checkpoints %s not referenced in run %s (%s)", uri, tags, run_id, reason(exc)
        )
