"""`neurok train`: one process, Lightning on the CPU (or one GPU with bf16), tracked in one MLflow run.

Layout of a run: <output_dir>/runs/<run_name>/checkpoints/{last,best}.ckpt; the MLflow run holds the
resolved config, dataset hash, metrics, system metrics, reconstruction plots and checkpoint references.
`resume=PATH` continues from a checkpoint into the same MLflow run and the same checkpoint folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from neurok.model.checkpoint import read_checkpoint
from neurok.threads import limit_threads
from neurok.track import log_checkpoints, open_run, tracking_uri
from neurok.train.config import TrainConfig
from neurok.train.parts import fit_parts, open_store

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    global_step: int
    metrics: dict[str, float]


class SaveLastOnTrainEnd(pl.Callback):
    """last.ckpt also when training stops off the checkpoint interval (max_minutes, a stop request). Saved in
    on_train_end, while the fit loop still holds the loader position that goes into the checkpoint."""

    def __init__(self, last: ModelCheckpoint):
        self.last = last

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last._last_global_step_saved != trainer.global_step:
            trainer.save_checkpoint(Path(self.last.dirpath) / "last.ckpt", weights_only=False)
            self.last.last_model_path = str(Path(self.last.dirpath) / "last.ckpt")


def train(cfg: TrainConfig, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    if cfg.trainer.threads > 0:
        limit_threads(cfg.trainer.threads)
    open_store(cfg.data.store)  # a missing store fails before an MLflow run is opened
    resumed = read_checkpoint(cfg.resume) if cfg.resume else None
    run_name = cfg.run_name or f"{Path(cfg.preset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = (
        Path(cfg.resume).resolve().parent.parent if resumed else Path(cfg.output_dir) / "runs" / run_name
    )
    uri = tracking_uri(cfg.output_dir)
    run_id = open_run(
        uri, cfg.experiment, run_name, cfg.output_dir, run_id=(resumed or {}).get("mlflow", {}).get("run_id")
    )
    log.info("MLflow run %s in %s; checkpoints in %s", run_id, uri, run_dir / "checkpoints")

    parts = fit_parts(cfg, uri, run_id, resumed=resumed is not None)
    has_val = parts.has_val
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        enable_version_counter=False,
    )
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    trainer = pl.Trainer(
        devices=1,
        callbacks=[
            last,
            *([best] if has_val else []),
            SaveLastOnTrainEnd(last),
            *parts.callbacks,
            *(callbacks or []),
        ],
        default_root_dir=run_dir,
        **parts.trainer_options,
    )
    trainer.fit(parts.module, datamodule=parts.data, ckpt_path=cfg.resume or None, weights_only=True)

    last_path = run_dir / "checkpoints" / "last.ckpt"
    best_path = Path(best.best_model_path) if has_val and best.best_model_path else None
    log_checkpoints(
        uri,
        run_id,
        {
            "last": {"path": str(last_path.resolve()), "step": trainer.global_step},
            "best": {
                "path": str(best_path.resolve()) if best_path else None,
                "score": float(best.best_model_score)
                if best_path and best.best_model_score is not None
                else None,
            },
        },
    )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return TrainResult(run_id, uri, run_dir, last_path, best_path, trainer.global_step, metrics)
