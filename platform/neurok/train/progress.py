"""One progress bar over a run's optimiser steps, towards trainer.max_steps, with tqdm's ETA and the
latest losses. Lightning's own bar counts the batches of an epoch ("x/106"), which says nothing of how
far a run of max_steps has come, and restarts every epoch."""

from __future__ import annotations

import lightning.pytorch as pl
from tqdm.auto import tqdm


class StepProgress(pl.Callback):
    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.bar: tqdm | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.is_global_zero:  # a resumed run starts where it stopped
            self.bar = tqdm(total=self.max_steps, initial=trainer.global_step, desc="train", unit="step")

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args) -> None:
        if self.bar is not None:
            self.bar.update(trainer.global_step - self.bar.n)
            self.bar.set_postfix(self._losses(trainer), refresh=False)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self._losses(trainer))

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @staticmethod
    def _losses(trainer: pl.Trainer) -> dict[str, str]:
        metrics = trainer.callback_metrics
        return {k: f"{float(metrics[k]):.4g}" for k in ("train/loss", "val/loss") if k in metrics}
