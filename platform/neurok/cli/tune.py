"""`neurok tune SWEEP.yaml [key=value ...]`: a Ray Tune sweep, tracked in MLflow, best trial registered."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "tune",
        help="sweep latent size and architecture with Ray Tune (ASHA); register the best trial",
        description="Overrides are dotted key=value pairs of the sweep config, e.g. search.num_samples=4 "
        "search.algorithm=optuna resources.num_cpus=2. RAY_ADDRESS selects a running cluster; "
        "MLFLOW_TRACKING_URI the tracking store (default <output_dir>/mlflow.db).",
    )
    parser.add_argument("config", help="sweep YAML, e.g. tune/latent_arch.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurok.config import load_config
    from neurok.tune.config import TuneConfig
    from neurok.tune.sweep import run_sweep

    cfg = load_config(TuneConfig, args.config, args.overrides)
    result = run_sweep(cfg)
    print(
        f"sweep {cfg.name}: {len(result.rows)} trials in {result.wall_s:.0f} s; MLflow parent run "
        f"{result.parent_run_id}"
    )
    for row in result.rows:
        marks = " pareto" if row["trial_id"] in result.pareto else ""
        print(f"  {row['trial_id']}: {row['state']}, {cfg.target.metric}={row.get(cfg.target.metric)}{marks}")
    if result.best:
        print(
            f"best completed trial by {cfg.target.metric} ({cfg.target.mode}): {result.best['trial_id']} "
            f"(run {result.best['run_id']}); test: {result.test_report}"
        )
    else:
        print(f"no trial completed with a {cfg.target.metric}: nothing to register (see the trials above)")
    if result.decision:
        d = result.decision
        verdict = "promoted to champion" if d.promoted else "not promoted"
        print(f"registered version {d.version}: {verdict} ({d.reason})")
        if not d.promoted:
            stays = f"stays at version {d.previous_champion}" if d.previous_champion else "does not exist yet"
            print(
                f"  models:/{d.name}@champion {stays}: the gates of "
                f"{cfg.registry_config or 'pipelines/registry.yaml'} decide. Train the trials longer "
                "(train_overrides: trainer.max_steps) or search wider; to accept this version as it is: "
                f"neurok registry promote {d.name}/{d.version} 'gates=[]'"
            )
    return 0
