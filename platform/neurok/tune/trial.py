"""One trial: the same `neurok train` code with the trial's hyper-parameters, reporting to Tune.

- Every validation is one Tune report (ASHA's time unit) with the training metrics and the objectives
  (IK, rollout, speed, evaluation-protocol reconstruction) measured on a few validation sequences, so a trial
  ASHA stops early still has every objective at its last report (it can be on the Pareto front).
- Each report carries a Tune checkpoint (the Lightning checkpoint of that moment). A trial that fails is
  restarted by Tune (FailureConfig) from its last report: same run folder, same MLflow run, same loader
  position, and Tune's report count (ASHA's clock) continues from there, so it stays in step with training.
- A final report after training adds the checkpoint reference, which marks the trial completed.
- The trial's MLflow run is the training run itself, nested under the sweep's parent run.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from ray import tune

from neurok.data.store import Store
from neurok.eval.config import EvalConfig
from neurok.train.config import load_train_config
from neurok.train.local import train
from neurok.tune.config import TuneConfig, from_dict
from neurok.tune.objectives import measure

TUNE_CHECKPOINT = "trial.ckpt"  # the Lightning checkpoint inside each Tune checkpoint


def overrides_for(params: dict, cfg: TuneConfig) -> list[str]:
    """Training-config overrides of one trial's sampled values."""
    out = []
    for name, value in params.items():
        for key in cfg.space[name].keys or [name]:
            out.append(f"{key}={value}")
    return out


class ReportToTune(pl.Callback):
    """Each validation's metrics and objectives to Tune, with a checkpoint to restart from."""

    def __init__(
        self, uri: str, parent_run_id: str, trial_id: str, params: dict, store: Store, eval_cfg: EvalConfig
    ):
        self.uri, self.parent, self.trial_id, self.params = uri, parent_run_id, trial_id, params
        self.store, self.eval_cfg = store, eval_cfg
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
        objectives = self._objectives(pl_module, trainer.global_step, run_id)
        # the objectives win a name clash (val/chamfer_l1): every report then measures the same way
        self.last = {**metrics, **objectives, "step": trainer.global_step, "run_id": run_id}
        with tempfile.TemporaryDirectory(prefix="neurok-trial-") as folder:
            trainer.save_checkpoint(Path(folder) / TUNE_CHECKPOINT, weights_only=False)
            tune.report(self.last, checkpoint=tune.Checkpoint.from_directory(folder))

    def _objectives(self, pl_module: pl.LightningModule, step: int, run_id: str) -> dict[str, float]:
        """Measured on a frozen copy, under a forked RNG: training continues exactly as without them. The
        validation loop's inference mode is lifted: inverse kinematics takes gradients."""
        with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng():
            model = copy.deepcopy(pl_module.model).cpu().eval().requires_grad_(False)
            values = measure(model, self.store, "val", self.eval_cfg)
        now = int(time.time() * 1000)
        metrics = [Metric(f"objective/{k}", v, now, step) for k, v in values.items()]
        MlflowClient(self.uri).log_batch(run_id, metrics=metrics)
        return values


def restore_last_report(last: Path) -> bool:
    """Put the checkpoint of this trial's last Tune report (if it was restarted) at `last`."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    last.parent.mkdir(parents=True, exist_ok=True)
    with checkpoint.as_directory() as folder:
        shutil.copyfile(Path(folder) / TUNE_CHECKPOINT, last)
    return True


def run_trial(params: dict, cfg_dict: dict, uri: str, parent_run_id: str) -> None:
    """Tune's function trainable (cfg and the parent run bound with tune.with_parameters)."""
    cfg = from_dict(cfg_dict)
    ctx = tune.get_context()
    run_name = f"{cfg.name}-{ctx.get_trial_id()}"  # stable across restarts: the same run folder and run
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
            *([f"resume={last}"] if restore_last_report(last) else []),
        ],
    )
    store = Store(train_cfg.data.store)
    reporter = ReportToTune(uri, parent_run_id, ctx.get_trial_id(), params, store, cfg.eval)
    result = train(train_cfg, callbacks=[reporter])
    # the last report measured the model at the last validation step, which last.ckpt holds
    tune.report({**reporter.last, "checkpoint": str(result.last_checkpoint)})
