"""Train a model on one GPU within a wall-clock budget, and say how long the GPU waited for data.

The training half of the GPU recipe (issue 14): the LightningModule and data module of `neurok train`,
without MLflow (a lent GPU machine has none of its server packages), bf16 on the GPU. The model is written
as a slim checkpoint (weights and config, what `neurok eval` and `neurok simulate` load), with a JSON
of what the run did: steps, samples, losses, validation metrics, and the input stall: the share of the
wall time between one training step's end and the next one's start (data loading and hand-off).

Usage: python benchmarks/gpu_recipe.py STORE --out DIR [--name NAME] [--minutes 5] [key=value ...]
(overrides of pipelines/train.yaml; e.g. data.batch_size=128 trainer.max_steps=2000 seed=1)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from neurok.data.loader import FramePairDataModule
from neurok.model.checkpoint import slim_checkpoint
from neurok.train.config import load_train_config
from neurok.train.module import NeurokModule

ROOT = Path(__file__).resolve().parent.parent


class InputStall(pl.Callback):
    """Wall time from a training step's end to the next one's start: what the accelerator waits for."""

    def __init__(self):
        self.waiting, self.started, self._end = 0.0, time.perf_counter(), None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._end is not None:
            self.waiting += time.perf_counter() - self._end

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done: what follows is waiting
        self._end = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default="model")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(int(os.environ.get("NEUROK_THREADS", "2")))
    cfg = load_train_config(
        ROOT / "pipelines/train.yaml",
        [f"data.store={args.store}", f"trainer.max_minutes={args.minutes}", *args.overrides],
    )
    pl.seed_everything(cfg.seed, verbose=False)
    module = NeurokModule.from_configs(cfg.model, cfg.optim, cfg.trainer.max_steps)
    data = FramePairDataModule(cfg.data, cfg.model.dual_quaternion, cfg.model.deformation_only)
    gpu = torch.cuda.is_available()
    stall = InputStall()
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if gpu else "32-true",
        max_steps=cfg.trainer.max_steps,
        max_time={"minutes": args.minutes},
        val_check_interval=cfg.trainer.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.trainer.val_batches or 1.0,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.trainer.gradient_clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[stall],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - start
    trainer.validate(module, datamodule=data, verbose=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(slim_checkpoint(checkpoint), out / f"{args.name}.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    report = {
        "name": args.name,
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "steps": trainer.global_step,
        "samples": trainer.global_step * cfg.data.batch_size,
        "train_seconds": wall,
        "steps_per_s": trainer.global_step / wall,
        "input_stall_share": stall.waiting / wall,
        "metrics": metrics,
        "overrides": args.overrides,
    }
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
