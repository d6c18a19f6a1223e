"""A sweep's config (tune/*.yaml): the search space, the search algorithm, ASHA, objectives, resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from omegaconf import OmegaConf

from neurok.eval.config import EvalConfig
from neurok.track.registry import Mode


class Kind(StrEnum):
    choice = "choice"
    uniform = "uniform"
    loguniform = "loguniform"
    randint = "randint"  # [low, high)


@dataclass
class Dimension:
    """One searched hyper-parameter: a Tune sampler, applied to one or more dotted training-config keys."""

    kind: Kind = Kind.choice
    values: list[Any] = field(default_factory=list)  # for choice
    low: float = 0.0
    high: float = 1.0
    keys: list[str] = field(default_factory=list)  # default: the dimension's own name, e.g. model.width


@dataclass
class SearchConfig:
    algorithm: str = "random"  # random | optuna (TPE)
    num_samples: int = 8
    seed: int = 0


@dataclass
class SchedulerConfig:
    """ASHA over Tune reports: one per validation, plus the final one with the objectives (max_t)."""

    asha: bool = True
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class Objective:
    metric: str
    mode: Mode = Mode.min


@dataclass
class ResourcesConfig:
    cpus_per_trial: float = 1.0
    max_concurrent: int = 0  # 0: the cluster's CPUs // cpus_per_trial
    num_cpus: int = 2  # CPUs of the local Ray instance started when there is no RAY_ADDRESS
    max_failures: int = 1  # a failed trial restarts and resumes from its last checkpoint


@dataclass
class TuneConfig:
    name: str = "latent_arch"  # the sweep's name: Ray's experiment folder and the MLflow parent run
    train_config: str = "pipelines/train.yaml"
    train_overrides: list[str] = field(default_factory=list)  # applied to every trial, e.g. preset=tiny
    store: str = ""  # the 4D store every trial trains on; default: the training config's data.store
    output_dir: str = "outputs/tune"
    space: dict[str, Dimension] = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    target: Objective = field(default_factory=lambda: Objective("val/chamfer_l1"))  # searched and ASHA'd
    objectives: list[Objective] = field(  # the Pareto front is over these
        default_factory=lambda: [
            Objective("val/chamfer_l1"),
            Objective("val/ik_chamfer_l1"),
            Objective("val/energy_drift"),
            Objective("val/ms_per_frame"),
        ]
    )
    eval: EvalConfig = field(default_factory=EvalConfig)  # budget of the IK, rollout and speed objectives
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    register: bool = True  # evaluate the best trial on the test split and register it
    full_eval: bool = True  # also `neurok eval` of the best trial: table, videos, viewer on its run
    registry_config: str = ""  # the gates; default: pipelines/registry.yaml if present
    simulate_config: str = ""  # the registered package's simulation; default: pipelines/simulate.yaml


def from_dict(values: dict) -> TuneConfig:
    """A resolved config back from the plain dict sent to the trials."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TuneConfig), values))
