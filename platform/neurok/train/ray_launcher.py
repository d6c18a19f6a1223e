"""`neurok train ... launcher=ray`: the same LightningModule and data module, one DDP rank per Ray worker.

- A TorchTrainer runs `train_worker` on `ray.num_workers` workers (RayDDPStrategy, RayLightningEnvironment,
  prepare_trainer); gloo on CPUs, NCCL on GPUs. Each rank's loader takes its shards by the Ray-provided
  rank (through the Lightning environment), with equal batches per rank by construction.
- Checkpoints: every `trainer.checkpoint_every_n_steps` and at the end, the full Lightning checkpoint
  (model, optimiser, schedule, RNG, loader position, MLflow run id) goes to
  `<storage_path>/<run name>/checkpoint_*/checkpoint.ckpt`; Ray keeps `ray.num_to_keep` of them.
- Resume (Train V2): the run name is stable (a hash of the config unless `run_name` is set), so a worker
  restart (FailureConfig) or a rerun of the same command finds its latest checkpoint through
  `ray.train.get_checkpoint()`.
- One MLflow run per training run: the driver creates it and records its id beside the checkpoints
  (`neurok_run.json`); a rerun resumes that run. Only global rank 0 logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import fsspec
import lightning.pytorch as pl
import ray
import ray.train
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
from ray.train.torch import TorchConfig, TorchTrainer

from neurok.config import to_dict, to_yaml
from neurok.errors import ConfigError, NeurokError
from neurok.threads import limit_threads
from neurok.track import log_checkpoints, open_run, tracking_uri
from neurok.train.config import TrainConfig
from neurok.train.local import TrainResult
from neurok.train.parts import fit_parts, open_store

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.ckpt"
RUN_MARKER = "neurok_run.json"  # the MLflow run of a Ray run name, beside its checkpoints


def _is_url(path: str) -> bool:
    return "://" in path


def _absolute(path: str) -> str:
    """Workers may start in another directory (a Ray job's working dir): local paths must be absolute."""
    return path if _is_url(path) or not path else str(Path(path).resolve())


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config a run trains with: local paths resolved against the current directory. The run name
    hashes the config, so whoever names a run (the driver, `make train-cluster`) resolves them first."""
    data = replace(cfg.data, store=_absolute(cfg.data.store))
    return replace(cfg, output_dir=_absolute(cfg.output_dir), data=data)


def storage_path(cfg: TrainConfig) -> str:
    path = cfg.ray.storage_path or os.environ.get("NEUROK_RAY_STORAGE") or f"{cfg.output_dir}/ray_results"
    return _absolute(path)


def run_name(cfg: TrainConfig) -> str:
    """`run_name`, else <preset>-<hash of the config without the scaling>: the same command resumes, a
    changed config starts a new run, and resuming on another number of workers keeps the name."""
    if cfg.run_name:
        return cfg.run_name
    identity = to_yaml(replace(cfg, ray=type(cfg.ray)(), launcher="ray"))
    return f"{Path(cfg.preset).stem}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


def recorded_run(storage: str, name: str) -> dict | None:
    """{"run_id", "tracking_uri"}: the MLflow run recorded beside the checkpoints of a Ray run, if any."""
    fs, root = fsspec.core.url_to_fs(storage)
    marker = f"{root}/{name}/{RUN_MARKER}"
    return json.loads(fs.cat_file(marker)) if fs.exists(marker) else None


def _open_mlflow_run(cfg: TrainConfig, uri: str, storage: str, name: str) -> tuple[str, bool]:
    """(run id, resumed): the MLflow run recorded for this Ray run name, or a new one recorded there."""
    if recorded := recorded_run(storage, name):
        return open_run(uri, cfg.experiment, name, cfg.output_dir, run_id=recorded["run_id"]), True
    fs, root = fsspec.core.url_to_fs(storage)
    run_id = open_run(uri, cfg.experiment, name, cfg.output_dir)
    fs.makedirs(f"{root}/{name}", exist_ok=True)
    fs.pipe_file(f"{root}/{name}/{RUN_MARKER}", json.dumps({"run_id": run_id, "tracking_uri": uri}).encode())
    return run_id, False


class ReportToRayTrain(pl.Callback):
    """ray.train.report with the full Lightning checkpoint every `every` steps and at the end of training.
    RayTrainReportCallback reports at epoch ends only; our epochs are not the checkpoint interval. Saved
    inside the fit loop, so the loader position is in the checkpoint. Every rank reports (Ray needs all);
    only rank 0 writes the file and hands over a checkpoint."""

    def __init__(self, every: int):
        self.every = every
        self.reported = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0 and trainer.global_step != self.reported:
            self._report(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self.reported:
            self._report(trainer)

    def _report(self, trainer: pl.Trainer) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics |= {"step": trainer.global_step, "epoch": trainer.current_epoch}
        with tempfile.TemporaryDirectory(prefix="neurok-ckpt-") as tmp:
            trainer.save_checkpoint(Path(tmp) / CHECKPOINT_NAME, weights_only=False)
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if trainer.is_global_zero else None
            ray.train.report(metrics, checkpoint=checkpoint)
        self.reported = trainer.global_step


class RankRecord(pl.Callback):
    """`<run>/ranks/rank-N.json`: what each rank did in its latest attempt (pid, steps, batches). Shows
    that ranks stayed in step, and names the process of a rank (the fault-tolerance test kills one)."""

    def __init__(self, directory: str):
        self.directory = directory
        self.record: dict = {}

    def _write(self, rank: int) -> None:
        fs, root = fsspec.core.url_to_fs(self.directory)
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(f"{root}/rank-{rank}.json", json.dumps(self.record).encode())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        context = ray.train.get_context()
        self.record = {
            "pid": os.getpid(),
            "rank": trainer.global_rank,
            "ray_rank": context.get_world_rank(),
            "world": trainer.world_size,
            "start_step": trainer.global_step,
            "batches": 0,
        }
        self._write(trainer.global_rank)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["batches"] += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record |= {"end_step": trainer.global_step, "epoch": trainer.current_epoch}
        self._write(trainer.global_rank)


def train_worker(config: dict) -> None:
    """One Ray Train worker: one DDP rank of the same Lightning fit the local launcher runs."""
    cfg: TrainConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), config["cfg"]))
    limit_threads(cfg.trainer.threads or max(1, int(cfg.ray.cpus_per_worker)))
    checkpoint = ray.train.get_checkpoint()
    resumed = config["resumed"] or checkpoint is not None
    parts = fit_parts(cfg, config["uri"], config["run_id"], resumed=resumed)
    trainer = pl.Trainer(
        devices="auto",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[
            *parts.callbacks,
            ReportToRayTrain(cfg.trainer.checkpoint_every_n_steps),
            RankRecord(config["ranks_dir"]),
            *config.get("callbacks", []),
        ],
        enable_checkpointing=False,  # Ray owns checkpoints and their retention
        default_root_dir=tempfile.gettempdir(),
        **parts.trainer_options,
    )
    trainer = prepare_trainer(trainer)
    if checkpoint is None:
        trainer.fit(parts.module, datamodule=parts.data)
        return
    with checkpoint.as_directory() as directory:
        path = Path(directory) / CHECKPOINT_NAME
        trainer.fit(parts.module, datamodule=parts.data, ckpt_path=str(path), weights_only=True)


def start_local_ray(**options) -> None:
    """A local Ray (its files in RAY_TMPDIR) whose workers run at normal priority. Ray's default niceness of
    15 puts a DDP rank below every other process on the machine; each preemption of one rank then stalls
    all ranks at the next all-reduce."""
    ray.init(_temp_dir=os.environ.get("RAY_TMPDIR"), _system_config={"worker_niceness": 0}, **options)


def _connect() -> bool:
    """Join RAY_ADDRESS (or the cluster a Ray job runs in), else start a local Ray; True if we started one."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        start_local_ray()
    return True


def make_trainer(cfg: TrainConfig, name: str, storage: str, worker_config: dict) -> TorchTrainer:
    gpu = cfg.ray.use_gpu
    return TorchTrainer(
        train_worker,
        train_loop_config=worker_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo", timeout_s=cfg.ray.timeout_s),
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers,
            use_gpu=gpu,
            resources_per_worker={"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1} if gpu else {})},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.num_to_keep),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
        ),
    )


def train(cfg: TrainConfig, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    """Like local.train; `callbacks` run on every rank (they travel to the workers pickled)."""
    if cfg.resume:
        raise ConfigError("resume=PATH is for launcher=local; with launcher=ray rerun with the same run_name")
    if cfg.ray.num_workers < 1:
        raise ConfigError(f"ray.num_workers={cfg.ray.num_workers}: at least one worker is needed")
    cfg = with_absolute_paths(cfg)
    open_store(cfg.data.store)  # a missing store fails before an MLflow run is opened
    name, storage = run_name(cfg), storage_path(cfg)
    uri = tracking_uri(cfg.output_dir)
    run_id, resumed = _open_mlflow_run(cfg, uri, storage, name)
    log.info("MLflow run %s in %s; Ray Train run %s in %s", run_id, uri, name, storage)

    started = _connect()
    worker_config = {
        "cfg": to_dict(cfg),
        "uri": uri,
        "run_id": run_id,
        "resumed": resumed,
        "ranks_dir": f"{storage}/{name}/ranks",
        "callbacks": callbacks or [],
    }
    try:
        result = make_trainer(cfg, name, storage, worker_config).fit()
    except Exception as exc:
        MlflowClient(uri).set_terminated(run_id, "FAILED")
        raise NeurokError(
            f"Ray Train run '{name}' failed ({type(exc).__name__}: {exc}); its checkpoints are in "
            f"{storage}/{name}: rerun the same command to resume"
        ) from exc
    finally:
        if started:
            ray.shutdown()

    last = f"{result.checkpoint.path}/{CHECKPOINT_NAME}" if result.checkpoint else ""
    step = int(result.metrics.get("step", 0))
    log_checkpoints(uri, run_id, {"last": {"path": last, "step": step}})
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    return TrainResult(run_id, uri, Path(f"{storage}/{name}"), Path(last), None, step, metrics)
