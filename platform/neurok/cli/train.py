"""`neurok train CONFIG [key=value ...]`: train in one process, or on Ray Train workers (launcher=ray)."""

from __future__ import annotations

import argparse
import importlib

# launcher -> the module whose `train(cfg)` runs it (imported on use: Ray costs seconds to import)
LAUNCHERS = {"local": "neurok.train.local", "ray": "neurok.train.ray_launcher"}


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "train",
        help="train the NeuROK model (one process, or DDP on a Ray cluster), tracked in MLflow",
        description="Train on the CPU (or one GPU with bf16), or with launcher=ray on Ray Train workers "
        "(DDP; the local Ray, or RAY_ADDRESS). Overrides are dotted key=value pairs, e.g. preset=tiny "
        "trainer.max_steps=200 data.store=PATH resume=outputs/runs/NAME/checkpoints/last.ckpt, or "
        "launcher=ray ray.num_workers=2 run_name=NAME (a rerun with the same name resumes)",
    )
    parser.add_argument("config", help="training pipeline YAML, e.g. pipelines/train.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurok.errors import ConfigError
    from neurok.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if cfg.launcher not in LAUNCHERS:
        raise ConfigError(f"launcher={cfg.launcher}: expected one of {', '.join(LAUNCHERS)}")
    result = importlib.import_module(LAUNCHERS[cfg.launcher]).train(cfg)
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    print(f"  last checkpoint: {result.last_checkpoint} (step {result.global_step})")
    if result.best_checkpoint:
        print(f"  best checkpoint: {result.best_checkpoint}")
    for key in ("val/loss", "val/chamfer_l1", "val/vertex_error", "val/shape_share"):
        if key in result.metrics:
            print(f"  {key}: {result.metrics[key]:.5f}")
    return 0
