"""`neurok registry list | promote | pull`: the registered simulator packages and their aliases."""

from __future__ import annotations

import argparse
import json
import math


def register(groups: argparse._SubParsersAction) -> None:
    registry = groups.add_parser(
        "registry",
        help="registered models: list versions, promote past the evaluation gates, pull a model folder",
        description="The tracking store is MLFLOW_TRACKING_URI, else outputs/mlflow.db.",
    )
    commands = registry.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="versions of a model: aliases, decisions, metrics")
    listing.add_argument("name", nargs="?", default="neurok")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)

    promote = commands.add_parser(
        "promote", help="move `champion` to NAME@ALIAS or NAME/VERSION if the gates pass (exit 1 if not)"
    )
    promote.add_argument("ref", help="e.g. neurok@challenger or neurok/3")
    promote.add_argument("--config", help="gates (RegistryConfig YAML; default pipelines/registry.yaml)")
    promote.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    promote.set_defaults(func=_promote)

    pull = commands.add_parser("pull", help="download a version as a self-contained pyfunc model folder")
    pull.add_argument("ref", help="e.g. neurok@champion")
    pull.add_argument("--out", required=True, help="folder to write (mlflow.pyfunc.load_model(DIR) loads it)")
    pull.set_defaults(func=_pull)


def _uri() -> str:
    from neurok.track import tracking_uri

    return tracking_uri("outputs")


def _list(args: argparse.Namespace) -> int:
    from neurok.track.registry import list_versions

    rows = list_versions(_uri(), args.name)
    if args.json:  # strict JSON: a metric that is not finite (a drift of inf) is null
        print(json.dumps(_finite_or_null(rows), indent=2, allow_nan=False))
        return 0
    print(f"{'version':>7}  {'aliases':<22} {'decision':<9} {'champion from':<25} metrics")
    for r in rows:
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()))
        aliases = ",".join(r["aliases"])
        print(f"{r['version']:>7}  {aliases:<22} {r['decision']:<9} {r['champion_from']:<25} {metrics}")
    return 0


def _finite_or_null(value):
    """value with every float that is not finite replaced by None, through lists and dicts."""
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _promote(args: argparse.Namespace) -> int:
    from neurok.config import config_path, load_config
    from neurok.track.registry import RegistryConfig, promote

    cfg = load_config(RegistryConfig, config_path(args.config, "registry"), args.overrides)
    decision = promote(_uri(), args.ref, cfg)
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    print(
        f"version {decision.version}: {verdict} ({decision.reason}); previous champion: "
        f"{decision.previous_champion or 'none'}"
    )
    for metric, row in decision.compared.items():
        print(
            f"  {metric}: challenger {row['challenger']} champion {row['champion']} "
            f"{'pass' if row['passed'] else 'FAIL'}"
        )
    return 0 if decision.promoted or decision.reason == "already the champion" else 1


def _pull(args: argparse.Namespace) -> int:
    from neurok.track.registry import pull

    path = pull(_uri(), args.ref, args.out)
    print(f"{args.ref} -> {path}")
    print(f'  load: mlflow.pyfunc.load_model("{path}")')
    return 0
