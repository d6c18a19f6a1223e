"""The training pipeline's config: data, model, optimiser, trainer. YAML in pipelines/, presets in
pipelines/model/ (a preset is a partial training config: the model and the sizes that go with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from neurok.config import load_config
from neurok.data.loader import LoaderConfig
from neurok.errors import ConfigError, require
from neurok.model.config import ModelConfig


@dataclass
class OptimConfig:
    lr: float = 1e-4  # AdamW, neurok-paper.md s9.2
    weight_decay: float = 0.01  # on weight matrices only (ours: not on norms, biases, tokens)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 2000
    final_lr_ratio: float = 0.01  # cosine decays to this fraction of lr at max_steps (ours)

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "must be positive")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be 0 or more")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be 0 or more")
        ratio = self.final_lr_ratio
        require(0 < ratio <= 1, "optim.final_lr_ratio", ratio, "must be in (0, 1]")


@dataclass
class TrainerConfig:
    max_steps: int = 300_000
    max_minutes: float = 0.0  # wall-clock bound, 0 for none; the cosine schedule still spans max_steps
    val_every_n_steps: int = 1000
    val_batches: int = 0  # 0: the whole validation split
    checkpoint_every_n_steps: int = 1000
    log_every_n_steps: int = 10
    sanity_val_steps: int = 1
    gradient_clip: float = 1.0
    accelerator: str = "auto"  # auto | cpu | gpu
    precision: str = "auto"  # auto: bf16-mixed on a GPU, 32-true on the CPU
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    progress_bar: bool = True
    plot_objects: int = 3  # validation objects in the reconstruction plot; 0 for none
    system_metrics: bool = True

    def __post_init__(self) -> None:
        for key in ("max_steps", "val_every_n_steps", "checkpoint_every_n_steps", "log_every_n_steps"):
            require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), "must be at least 1")
        require(self.gradient_clip > 0, "trainer.gradient_clip", self.gradient_clip, "must be positive")


@dataclass
class RayConfig:
    """launcher=ray: Ray Train (TorchTrainer) settings. One worker is one DDP rank."""

    num_workers: int = 2
    use_gpu: bool = False  # one GPU per worker; NCCL on GPUs, gloo on CPUs
    cpus_per_worker: float = 1.0
    storage_path: str = ""  # shared by every node (path or fsspec URL); default $NEUROK_RAY_STORAGE,
    # else <output_dir>/ray_results
    num_to_keep: int = 2  # checkpoints kept in storage
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before the run fails
    timeout_s: int = 1800  # collective timeout: a rank mismatch fails after this instead of hanging


@dataclass
class TrainConfig:
    preset: str = "base"  # pipelines/model/<preset>.yaml, or a path to a preset file
    seed: int = 0
    output_dir: str = "outputs"  # MLflow store (unless MLFLOW_TRACKING_URI) and runs/<run_name>/checkpoints
    experiment: str = "neurok"
    run_name: str = ""  # default: <preset>-<timestamp> (local), <preset>-<config hash> (ray: stable, resumes)
    launcher: str = "local"  # local: one process | ray: Ray Train DDP workers (`ray` section)
    resume: str = ""  # a checkpoint to continue from (same MLflow run)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def preset_path(preset: str, config_path: str | Path | None) -> Path:
    if preset.endswith((".yaml", ".yml")):
        return Path(preset)
    base = Path(config_path).parent if config_path else Path("pipelines")
    return base / "model" / f"{preset}.yaml"


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults < preset < the pipeline YAML < command-line overrides."""
    first = load_config(TrainConfig, path, overrides)  # validates everything and names the preset
    preset = preset_path(first.preset, path)
    if not preset.is_file():
        raise ConfigError(f"{preset}: model preset '{first.preset}' not found (see pipelines/model/)")
    with_preset = load_config(TrainConfig, preset)
    return load_config(with_preset, path, overrides)  # a structured instance: its values are the defaults
