"""One trial: the same `neurok train` code with the trial's hyper-parameters, reporting to Tune.

- The run name is `<sweep>-<trial id>`, stable across restarts: a restarted trial finds its own
  last.ckpt and resumes it (same MLflow run, same loader position).
- Every validation is one Tune report (ASHA's time unit); the last report adds the IK, rollout and speed
  objectives on a few validation sequences (trials ASHA stops early never get there).
- The trial's MLflow run is the training run itself, nested under the sweep's parent run.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning.pytorch as pl
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune

from neurok.data.store import Store
from neurok.train.checkpoint import load_model
from neurok.train.config import load_train_config
from neurok.train.local import train
from neurok.tune.config import TuneConfig, from_dict
from neurok.tune.objectives import measure


def overrides_for(params: dict, cfg: TuneConfig) -> list[str]:
    """Training-config overrides of one trial's sampled values."""
    out = []
    for name, value in params.items():
        for key in cfg.space[name].keys or [name]:
            out.append(f"{key}={value}")
    return out


class ReportToTune(pl.Callback):
    """Each validation's metrics to Tune; the trial's run nested under the sweep's parent run."""

    def __init__(self, uri: str, parent_run_id: str, trial_id: str, params: dict):
        self.uri, self.parent, self.trial_id, self.params = uri, parent_run_id, trial_id, params
        self.last: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        client = MlflowClient(self.uri)
        run_id = trainer.logger.run_id
        client.set_tag(run_id, "mlflow.parentRunId", self.parent)
        client.set_tag(run_id, "tune.trial_id", self.trial_id)
        for name, value in self.params.items():
            client.set_tag(run_id, f"tune.{name}", str(value))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        run_id = trainer.logger.run_id
        # ASHA may end the trial at this report: the checkpoint reference must be in MLflow already
        last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        if last.is_file():
            MlflowClient(self.uri).set_tag(run_id, "checkpoint.last", str(last))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.last = {**metrics, "step": trainer.global_step, "run_id": run_id}
        tune.report(self.last)


def run_trial(params: dict, cfg_dict: dict, uri: str, parent_run_id: str) -> None:
    """Tune's function trainable (cfg and the parent run bound with tune.with_parameters)."""
    cfg = from_dict(cfg_dict)
    ctx = tune.get_context()
    run_name = f"{cfg.name}-{ctx.get_trial_id()}"
    output_dir = Path(cfg.output_dir).resolve()
    last = output_dir / "runs" / run_name / "checkpoints" / "last.ckpt"
    train_cfg = load_train_config(
        cfg.train_config,
        [
            *cfg.train_overrides,
            *overrides_for(params, cfg),
            f"output_dir={output_dir}",
            f"run_name={run_name}",
            f"experiment={cfg.name}",
            f"trainer.threads={max(1, int(cfg.resources.cpus_per_trial))}",
            *([f"resume={last}"] if last.is_file() else []),
        ],
    )
    reporter = ReportToTune(uri, parent_run_id, ctx.get_trial_id(), params)
    result = train(train_cfg, callbacks=[reporter])
    checkpoint = result.best_checkpoint or result.last_checkpoint
    objectives = measure(load_model(checkpoint), Store(train_cfg.data.store), "val", cfg.eval)
    MlflowClient(uri).log_batch(result.run_id, metrics=_metrics(objectives))
    tune.report({**reporter.last, **objectives, "checkpoint": str(checkpoint)})


def _metrics(values: dict[str, float]) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(f"objective/{k}", v, now, 0) for k, v in values.items()]
