"""The model registry: versions of the simulator package, and aliases moved only by evaluation gates.

    register  log the package to the run that produced the model, add a version, alias `challenger`;
              the evaluation report's metrics become version tags `eval.<metric>` (the gates read them)
    promote   compare a version with the current `champion` on the configured gates; move `champion`
              only when every gate passes. The decision, the metrics compared and the previous champion
              are version tags (`promotion.*`), and `champion.from` / `champion.until` on the versions
              keep the alias history that MLflow itself does not: what was in production when.
    pull      download a version (NAME@ALIAS or NAME/VERSION) as a self-contained model folder
    model_files  the checkpoint and simulation settings behind a --model argument (file, folder or URI)

Gates live in pipelines/registry.yaml (RegistryConfig).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from neurok.errors import BadInputError

CHAMPION, CHALLENGER = "champion", "challenger"


class Mode(StrEnum):
    min = "min"  # lower is better
    max = "max"


@dataclass
class Gate:
    metric: str  # a key of the evaluation report
    mode: Mode = Mode.min
    max_regression: float = 0.0  # the challenger may be this fraction worse than the champion
    limit: float | None = None  # an absolute bound the challenger must meet, champion or not


@dataclass
class RegistryConfig:
    name: str = "neurok"
    gates: list[Gate] = field(
        default_factory=lambda: [
            Gate("test/chamfer_l1", max_regression=0.05),
            Gate("test/energy_drift", max_regression=0.25),
        ]
    )


@dataclass
class Decision:
    name: str  # the registered model
    version: str
    promoted: bool
    reason: str
    compared: dict[str, dict]
    previous_champion: str | None


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """'NAME@ALIAS' -> (name, alias, None); 'NAME/VERSION' -> (name, None, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, alias, None
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, None, version
    raise BadInputError(f"model reference {ref!r}: expected NAME@ALIAS or NAME/VERSION, e.g. neurok@champion")


def resolve(client: MlflowClient, ref: str) -> ModelVersion:
    name, alias, version = parse_ref(ref)
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise BadInputError(
            f"{ref}: no such model version in {client._registry_uri} ({exc.message})"
        ) from None


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register(
    uri: str,
    run_id: str,
    name: str,
    checkpoint: dict,
    train_config_yaml: str,
    dataset: dict,
    report: dict[str, float],
    simulate_cfg,
) -> ModelVersion:
    """Log the simulator package to `run_id`, register it as a new version of `name`, alias challenger."""
    from neurok.track.package import log_package  # imports eval: only needed when registering

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = log_package(checkpoint, train_config_yaml, dataset, report, simulate_cfg, registered_name=name)
    client = MlflowClient(uri)
    version = str(info.registered_model_version)
    tags = {f"eval.{k}": repr(float(v)) for k, v in report.items()}
    tags |= {"dataset.content_hash": dataset.get("content_hash", ""), "source.run_id": run_id}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version)
    return client.get_model_version(name, version)


def _metric(version: ModelVersion, metric: str) -> float | None:
    value = version.tags.get(f"eval.{metric}")
    return float(value) if value is not None else None


def check_gates(
    challenger: ModelVersion, champion: ModelVersion | None, gates: list[Gate]
) -> tuple[bool, str, dict]:
    """Every gate against the champion (when there is one) and its absolute limit."""
    compared, failed = {}, []
    for gate in gates:
        new = _metric(challenger, gate.metric)
        old = _metric(champion, gate.metric) if champion is not None else None
        sign = 1.0 if gate.mode == Mode.min else -1.0
        why = []
        if new is None:
            why.append("missing from the challenger's report")
        else:
            if old is not None and sign * new > sign * old + abs(old) * gate.max_regression:
                why.append(
                    f"{new:.4g} is worse than the champion's {old:.4g} by more than {gate.max_regression:.0%}"
                )
            if gate.limit is not None and sign * new > sign * gate.limit:
                why.append(f"{new:.4g} misses the limit {gate.limit:.4g}")
        compared[gate.metric] = {
            "challenger": new,
            "champion": old,
            "mode": str(gate.mode),
            "passed": not why,
        }
        failed += [f"{gate.metric}: {w}" for w in why]
    if failed:
        return False, "; ".join(failed), compared
    return True, "first champion" if champion is None else "every gate passed", compared


def promote(uri: str, ref: str, cfg: RegistryConfig) -> Decision:
    """Move `champion` to the version `ref` names when its gates pass; record the decision either way."""
    client = MlflowClient(uri)
    version = resolve(client, ref)
    name = version.name
    champion = _champion(client, name)
    number = str(version.version)  # an int or a str, depending on the store
    previous = str(champion.version) if champion is not None else None
    if previous == number:
        return Decision(name, number, False, "already the champion", {}, previous)
    passed, reason, compared = check_gates(version, champion, cfg.gates)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tags = {
        "promotion.decision": "promoted" if passed else "rejected",
        "promotion.reason": reason,
        "promotion.compared": json.dumps(compared),
        "promotion.previous_champion": previous or "none",
        "promotion.decided_at": now,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)
    if passed:
        client.set_registered_model_alias(name, CHAMPION, number)
        client.set_model_version_tag(name, number, "champion.from", now)
        if previous:
            client.set_model_version_tag(name, previous, "champion.until", now)
            client.set_model_version_tag(name, previous, "champion.replaced_by", number)
    return Decision(name, number, passed, reason, compared, previous)


def list_versions(uri: str, name: str) -> list[dict]:
    """Every version of `name`, newest first: aliases, the promotion decision and the evaluation metrics."""
    client = MlflowClient(uri)
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException:
        raise BadInputError(f"no registered model {name!r} in {uri}") from None
    rows = []
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: -int(v.version)):
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "decision": v.tags.get("promotion.decision", ""),
                "champion_from": v.tags.get("champion.from", ""),
                "champion_until": v.tags.get("champion.until", ""),
                "run_id": v.run_id,
                "metrics": {k[5:]: float(x) for k, x in v.tags.items() if k.startswith("eval.")},
            }
        )
    return rows


def pull(uri: str, ref: str, out: str | Path) -> Path:
    """Download a version's model folder (MLmodel, python_model.pkl, artifacts/) into `out`."""
    version = resolve(MlflowClient(uri), ref)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name, alias, number = parse_ref(ref)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}@{alias}" if alias else f"models:/{name}/{number}", dst_path=str(out)
    )
    (Path(path) / "registry.json").write_text(
        json.dumps(
            {"name": version.name, "version": str(version.version), "ref": ref, "tags": version.tags},
            indent=2,
        )
    )
    return Path(path)


MODEL_URIS = ("models:/", "runs:/")


def model_files(ref: str, dst: str | Path) -> tuple[Path, Path | None]:
    """The training checkpoint behind `ref`, and the package's simulate.yaml when it is a package.

    `ref` is a training checkpoint file, a model folder (`neurok registry pull`), or an MLflow
    models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ URI of a package, downloaded into `dst` from
    MLFLOW_TRACKING_URI's store.
    """
    if ref.startswith(MODEL_URIS):
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(dst)))
        except MlflowException as exc:
            store = mlflow.get_tracking_uri()
            raise BadInputError(f"{ref}: {exc.message} (tracking store {store})") from None
    else:
        folder = Path(ref)
    if not folder.is_dir():
        return folder, None
    checkpoint, settings = (folder / "artifacts" / name for name in ("model.ckpt", "simulate.yaml"))
    if not checkpoint.is_file():
        raise BadInputError(f"{ref}: no artifacts/model.ckpt in {folder}: not a NeuROK simulator package")
    return checkpoint, settings if settings.is_file() else None
