"""The 4D store's schema: the unit of data (`Sequence`), the per-sequence tables and their columns.

Coordinates are metres in a right-handed, y-up frame. Time is seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SCHEMA_VERSION = 1
UNITS = {"length": "m", "time": "s", "mass": "kg", "force": "N"}
FRAME = "right-handed, y-up"

OBJECT_TYPES = ("elastic", "cloth", "articulated", "multibody", "ingested")
SPLITS = ("train", "val", "test", "heldout")

# Per-vertex flags (bit mask) marking the regions the physical conditions act on.
FLAG_PINNED = 1
FLAG_POKED = 2
FLAG_DRAGGED = 4

# Physical conditions recorded with every sequence, in this column order. 0 means "not applied".
CONDITION_FIELDS = (
    "frame_dt",
    "physics_dt",
    "gravity_x",
    "gravity_y",
    "gravity_z",
    "youngs_modulus",
    "poisson_ratio",
    "damping",
    "density",
    "friction",
    "init_velocity_x",
    "init_velocity_y",
    "init_velocity_z",
    "init_angular_velocity_x",
    "init_angular_velocity_y",
    "init_angular_velocity_z",
    "poke_impulse_x",
    "poke_impulse_y",
    "poke_impulse_z",
    "poke_time",
    "drag_offset_x",
    "drag_offset_y",
    "drag_offset_z",
    "drag_start",
    "drag_end",
    "actuation_amplitude",
    "actuation_frequency",
)

# Columns of the per-sequence index table. Offsets are rows inside the sequence's loader shard.
INDEX_FIELDS = (
    "shard",
    "vertex_offset",
    "n_frames",
    "n_vertices",
    "face_offset",
    "n_faces",
    "flag_offset",
    "object_id",
    "object_type",
    "category",
    "split",
)


@dataclass
class Sequence:
    """One simulated or ingested sequence: a fixed-topology surface mesh over time."""

    name: str
    frames: np.ndarray  # (T, V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    object_type: str
    category: str
    object_id: int
    split: str = "train"
    vertex_flags: np.ndarray | None = None  # (V,) uint8, FLAG_* bits
    conditions: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = np.ascontiguousarray(self.frames, dtype=np.float32)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        n_vertices = self.frames.shape[1] if self.frames.ndim == 3 else -1
        if self.vertex_flags is None:
            self.vertex_flags = np.zeros(max(n_vertices, 0), np.uint8)
        self.vertex_flags = np.ascontiguousarray(self.vertex_flags, dtype=np.uint8)
        check_sequence(self)

    @property
    def n_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def n_vertices(self) -> int:
        return self.frames.shape[1]

    def condition_row(self) -> np.ndarray:
        return np.array([self.conditions.get(k, 0.0) for k in CONDITION_FIELDS], np.float32)


def check_sequence(seq: Sequence) -> None:
    """Reject a malformed sequence before it reaches a store, naming the sequence and the fault."""
    from neurok.errors import BadInputError

    def bad(msg: str) -> BadInputError:
        return BadInputError(f"sequence '{seq.name}': {msg}")

    if seq.frames.ndim != 3 or seq.frames.shape[2] != 3:
        raise bad(f"frames must have shape (T, V, 3), got {seq.frames.shape}")
    if not np.isfinite(seq.frames).all():
        frame, vertex = np.argwhere(~np.isfinite(seq.frames).all(axis=2))[0]
        raise bad(f"NaN/Inf at frame {frame}, vertex {vertex}")
    if seq.n_frames < 2:
        raise bad(f"needs at least 2 frames, got {seq.n_frames}")
    if seq.faces.ndim != 2 or seq.faces.shape[1] != 3 or len(seq.faces) == 0:
        raise bad(f"faces must have shape (F, 3) with F > 0, got {seq.faces.shape}")
    if seq.faces.min() < 0 or seq.faces.max() >= seq.n_vertices:
        raise bad(
            f"face indices must lie in [0, {seq.n_vertices}), got [{seq.faces.min()}, {seq.faces.max()}]"
        )
    if seq.vertex_flags.shape != (seq.n_vertices,):
        raise bad(f"vertex_flags must have shape ({seq.n_vertices},), got {seq.vertex_flags.shape}")
    if seq.object_type not in OBJECT_TYPES:
        raise bad(f"object_type '{seq.object_type}' is not one of {OBJECT_TYPES}")
    if seq.split not in SPLITS:
        raise bad(f"split '{seq.split}' is not one of {SPLITS}")
    unknown = set(seq.conditions) - set(CONDITION_FIELDS)
    if unknown:
        raise bad(f"unknown condition fields {sorted(unknown)}; known: {CONDITION_FIELDS}")


def normalisation(frames: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale that map frame 0's bounding box into the unit cube [-0.5, 0.5]^3."""
    lo, hi = frames[0].min(axis=0), frames[0].max(axis=0)
    return ((lo + hi) / 2).astype(np.float32), float(max((hi - lo).max(), 1e-8))
