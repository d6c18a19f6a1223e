"""A Lightning callback for what the MLflow logger does not do: run inputs, system metrics, the run id in
checkpoints, and reconstruction plots. Only global rank 0 talks to MLflow; the launcher opens the run and
hands the same run id to every rank, so a DDP run is one MLflow run."""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning.pytorch as pl
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from neurok.track.logger import UNREACHABLE, reason
from neurok.track.run import log_run_inputs

log = logging.getLogger(__name__)


class MlflowRunCallback(pl.Callback):
    def __init__(
        self,
        uri: str,
        run_id: str,
        config: dict,
        config_yaml: str,
        dataset: dict,
        resumed: bool,
        figure: Callable[[pl.LightningModule], Figure] | None = None,
        system_metrics: bool = True,
    ):
        self.uri, self.run_id, self.resumed = uri, run_id, resumed
        self.config, self.config_yaml, self.dataset = config, config_yaml, dataset
        self.figure, self.system_metrics = figure, system_metrics
        self._monitor = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.resumed:  # params are immutable in MLflow: a resumed run keeps those it started with
            log_run_inputs(self.uri, self.run_id, self.config, self.config_yaml, self.dataset)
        if self.system_metrics:
            self._start_system_metrics()

    def _start_system_metrics(self) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=self.resumed, tracking_uri=self.uri
            )
            self._monitor.start()
        except ImportError as exc:  # psutil missing
            log.warning("system metrics are not logged: %s", exc)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["mlflow"] = {"run_id": self.run_id, "tracking_uri": self.uri}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.figure is None:
            return
        fig = self.figure(pl_module)
        name = f"reconstructions/step_{trainer.global_step:07d}.png"
        try:
            MlflowClient(self.uri).log_figure(self.run_id, fig, name)
        except UNREACHABLE as exc:  # a tracking-server outage must not stop training
            log.warning("MLflow at %s: %s not logged (%s)", self.uri, name, reason(exc))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
