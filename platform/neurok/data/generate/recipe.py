"""Dataset recipes (`datasets/*.yaml`): which objects, which physics, how many sequences, which splits."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from neurok.data.splits import SplitSpec
from neurok.errors import require


@dataclass
class TypeSpec:
    """One object type of the mix."""

    weight: float = 1.0  # share of the recipe's objects
    categories: list[str] = field(default_factory=list)  # e.g. elastic/torus; empty: all of the type


@dataclass
class PhysicsSpec:
    """Ranges the per-sequence physical conditions are drawn from (uniform, or log-uniform for moduli)."""

    gravity: list[float] = field(default_factory=lambda: [0.0, -9.81, 0.0])  # m/s^2, y-up
    gravity_tilt_deg: float = 0.0  # random tilt of the gravity direction
    youngs_modulus: list[float] = field(default_factory=lambda: [3e3, 3e4])  # Pa, log-uniform
    # Pa, log-uniform: cloth (0.2 mm thick) and shells (1 mm thick), far stiffer than the solids' range
    cloth_youngs_modulus: list[float] = field(default_factory=lambda: [5e6, 5e7])
    poisson_ratio: list[float] = field(default_factory=lambda: [0.2, 0.45])
    damping: list[float] = field(default_factory=lambda: [0.0, 0.02])
    density: list[float] = field(default_factory=lambda: [200.0, 1200.0])  # kg/m^3
    friction: list[float] = field(default_factory=lambda: [0.3, 1.0])
    p_poke: float = 0.5  # probability of a poke (an impulse on a surface region)
    poke_speed: list[float] = field(default_factory=lambda: [0.5, 3.0])  # m/s given to the region
    p_drag: float = 0.3  # probability of a drag (a region moved along a path)
    drag_distance: list[float] = field(default_factory=lambda: [0.05, 0.3])  # m
    p_init_velocity: float = 0.5
    init_speed: list[float] = field(default_factory=lambda: [0.2, 2.0])  # m/s
    init_spin: list[float] = field(default_factory=lambda: [0.0, 3.0])  # rad/s
    p_pin: float = 0.3  # probability of pinning a region (cloth is always pinned or draped)
    actuation_amplitude: list[float] = field(default_factory=lambda: [0.3, 1.2])  # rad or m of joint travel
    actuation_frequency: list[float] = field(default_factory=lambda: [0.3, 1.5])  # Hz
    substeps: int = 8  # physics steps per recorded frame


@dataclass
class StoreSpec:
    sequences_per_shard: int = 16
    chunk_rows: int = 131072
    clevel: int = 3


@dataclass
class Recipe:
    name: str = "tiny"
    seed: int = 0
    objects: int = 4  # distinct rest shapes
    sequences_per_object: int = 2  # each with its own physical conditions
    frames: int = 24
    fps: float = 30.0
    target_vertices: int = 300  # surface vertices of a rest mesh, approximately
    types: dict[str, TypeSpec] = field(
        default_factory=lambda: {t: TypeSpec() for t in ("elastic", "cloth", "articulated", "multibody")}
    )
    asset_packs: list[str] = field(default_factory=list)  # optional: pybullet_data, dm_control
    physics: PhysicsSpec = field(default_factory=PhysicsSpec)
    splits: SplitSpec = field(default_factory=SplitSpec)
    store: StoreSpec = field(default_factory=StoreSpec)
    workers: int = 2
    executor: str = "process"  # process | ray (later)

    def __post_init__(self) -> None:
        for key in ("objects", "sequences_per_object", "workers"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "must be at least 1")
        require(self.frames >= 2, "frames", self.frames, "must be at least 2: a sequence is a motion")
        require(self.fps > 0, "fps", self.fps, "must be positive")
        require(self.target_vertices >= 4, "target_vertices", self.target_vertices, "must be at least 4")
        for name, spec in self.types.items():
            require(spec.weight >= 0, f"types.{name}.weight", spec.weight, "must be 0 or more")


@dataclass
class SequenceSpec:
    """Everything needed to simulate one sequence, independent of every other sequence."""

    index: int
    name: str
    object_type: str
    category: str
    object_id: int
    split: str
    shape_seed: int  # the rest shape: same for all sequences of an object
    condition_seed: int  # the physical conditions of this sequence
    frames: int
    fps: float
    target_vertices: int
    asset_packs: list[str]


def recipe_hash(recipe: Recipe) -> str:
    """Hash of the fields that decide the store's content (not workers or executor)."""
    from neurok.config import to_dict

    content = to_dict(recipe)
    for key in ("workers", "executor"):
        content.pop(key)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
