"""`neurok train CONFIG [key=value ...]`: train in one process, tracked in MLflow."""

from __future__ import annotations

import argparse


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "train",
        help="train the NeuROK model in one process, tracked in MLflow",
        description="Train on the CPU (or one GPU with bf16). Overrides are dotted key=value pairs, e.g. "
        "preset=tiny trainer.max_steps=200 data.store=PATH resume=outputs/runs/NAME/checkpoints/last.ckpt",
    )
    parser.add_argument("config", help="training pipeline YAML, e.g. pipelines/train.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from neurok.train.config import load_train_config
    from neurok.train.local import train

    result = train(load_train_config(args.config, args.overrides))
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    print(f"  last checkpoint: {result.last_checkpoint} (step {result.global_step})")
    if result.best_checkpoint:
        print(f"  best checkpoint: {result.best_checkpoint}")
    for key in ("val/loss", "val/chamfer_l1", "val/vertex_error"):
        if key in result.metrics:
            print(f"  {key}: {result.metrics[key]:.5f}")
    return 0
