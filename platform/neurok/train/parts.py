"""What every launcher builds the same way: the LightningModule, the data module, the MLflow callback and
the Trainer options. Launchers add only how processes are started and where checkpoints go."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor

from neurok.config import to_dict, to_yaml
from neurok.data.loader import FramePairDataModule
from neurok.data.store import Store
from neurok.errors import StoreError
from neurok.track import MlflowRunCallback, PatientMlflowLogger, dataset_fingerprint
from neurok.train.config import TrainConfig
from neurok.train.examples import ReconstructionExamples
from neurok.train.module import NeurokModule
from neurok.train.progress import StepProgress


def _quiet_lightning() -> None:
    """Each Lightning line once, through the CLI's handler: Lightning adds stderr handlers of its own at
    import, so every line came twice; and no advertisement for a logger we do not use."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


_quiet_lightning()


@dataclass
class FitParts:
    module: NeurokModule
    data: FramePairDataModule
    has_val: bool
    callbacks: list[pl.Callback]  # MLflow inputs/plots/system metrics, learning rate
    trainer_options: dict  # pl.Trainer keyword arguments shared by all launchers


def open_store(path: str) -> Store:
    try:
        return Store(path)
    except StoreError as exc:
        raise StoreError(f"{exc}; generate one with `neurok data generate` or set data.store=PATH") from None


def uses_gpu(cfg: TrainConfig) -> bool:
    accelerator = cfg.trainer.accelerator
    return accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())


def fit_parts(cfg: TrainConfig, uri: str, run_id: str, resumed: bool) -> FitParts:
    store = open_store(cfg.data.store)
    pl.seed_everything(cfg.seed, verbose=False)
    module = NeurokModule.from_configs(cfg.model, cfg.optim, cfg.trainer.max_steps)
    data = FramePairDataModule(cfg.data, cfg.model.dual_quaternion, cfg.model.deformation_only)
    has_val = data.has_split("val")
    figure = None
    if cfg.trainer.plot_objects > 0:
        figure = ReconstructionExamples(
            cfg.data.store, cfg.trainer.plot_objects, cfg.data.points, cfg.model, cfg.seed
        )
    tracking = MlflowRunCallback(
        uri,
        run_id,
        to_dict(cfg),
        to_yaml(cfg),
        dataset_fingerprint(store.path, store.shards, len(store)),
        resumed=resumed,
        figure=figure,
        system_metrics=cfg.trainer.system_metrics,
    )
    gpu = uses_gpu(cfg)
    precision = (
        cfg.trainer.precision if cfg.trainer.precision != "auto" else ("bf16-mixed" if gpu else "32-true")
    )
    options = dict(
        accelerator="gpu" if gpu else "cpu",
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
        enable_progress_bar=False,  # StepProgress counts the run's steps instead of an epoch's batches
        logger=PatientMlflowLogger(
            experiment_name=cfg.experiment,
            run_id=run_id,
            tracking_uri=uri,
            spill_dir=Path(cfg.output_dir) / "unsent-metrics",
        ),
        enable_model_summary=False,
    )
    callbacks = [tracking, LearningRateMonitor("step")]
    if cfg.trainer.progress_bar:
        callbacks.append(StepProgress(cfg.trainer.max_steps))
    return FitParts(module, data, has_val, callbacks, options)
