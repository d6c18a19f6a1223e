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
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from neurok.config import to_dict, to_yaml
from neurok.data.loader import FramePairDataModule
from neurok.data.store import Store
from neurok.errors import BadInputError, StoreError
from neurok.track import MlflowRunCallback, dataset_fingerprint, log_checkpoints, open_run, tracking_uri
from neurok.train.config import TrainConfig
from neurok.train.examples import ReconstructionExamples
from neurok.train.module import NeurokModule

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


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, loaded without executing code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: checkpoint not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def _open_store(path: str) -> Store:
    try:
        return Store(path)
    except StoreError as exc:
        raise StoreError(f"{exc}; generate one with `neurok data generate` or set data.store=PATH") from None


def train(cfg: TrainConfig, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    store = _open_store(cfg.data.store)
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

    pl.seed_everything(cfg.seed, verbose=False)
    module = NeurokModule.from_configs(cfg.model, cfg.optim, cfg.trainer.max_steps)
    data = FramePairDataModule(cfg.data, cfg.model.dual_quaternion)
    has_val = data.has_split("val")
    figure = None
    if cfg.trainer.plot_objects > 0:
        figure = ReconstructionExamples(
            cfg.data.store, cfg.trainer.plot_objects, cfg.data.points, cfg.model.dual_quaternion, cfg.seed
        )
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
    tracking = MlflowRunCallback(
        uri,
        run_id,
        to_dict(cfg),
        to_yaml(cfg),
        dataset_fingerprint(store.path, store.shards, len(store)),
        resumed=resumed is not None,
        figure=figure,
        system_metrics=cfg.trainer.system_metrics,
    )
    gpu = cfg.trainer.accelerator == "gpu" or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )
    precision = (
        cfg.trainer.precision if cfg.trainer.precision != "auto" else ("bf16-mixed" if gpu else "32-true")
    )
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision=precision,
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,
        max_time={"minutes": cfg.trainer.max_minutes} if cfg.trainer.max_minutes > 0 else None,
        val_check_interval=cfg.trainer.val_every_n_steps if has_val else None,
        check_val_every_n_epoch=None,
        limit_val_batches=(cfg.trainer.val_batches or 1.0) if has_val else 0,
        num_sanity_val_steps=cfg.trainer.sanity_val_steps,
        gradient_clip_val=cfg.trainer.gradient_clip,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=cfg.trainer.progress_bar,
        logger=MLFlowLogger(experiment_name=cfg.experiment, run_id=run_id, tracking_uri=uri),
        callbacks=[
            last,
            *([best] if has_val else []),
            SaveLastOnTrainEnd(last),
            tracking,
            LearningRateMonitor("step"),
            *(callbacks or []),
        ],
        default_root_dir=run_dir,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data, ckpt_path=cfg.resume or None, weights_only=True)

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
