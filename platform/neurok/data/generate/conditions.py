"""The physical conditions of one sequence, drawn from a recipe's `PhysicsSpec` ranges by its condition seed.

Everything is drawn up front in a fixed order, so a scene that ignores a condition does not shift the
others. Vectors are y-up here, as in the store; scenes convert them for MuJoCo. A scene records only what
it applied (the `*_record` methods), leaving the other `CONDITION_FIELDS` absent. Pokes are recorded as
impulses (N s): the sampled speed times the mass poked (a surface patch's share, or a rigid part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec


@dataclass
class Poke:
    speed: float  # m/s: the impulse is this times the mass poked
    time: float  # s after the first frame


@dataclass
class Drag:
    offset: np.ndarray  # (3,) m, y-up: where the grabbed region goes, relative to where it was grabbed
    start: float  # s
    end: float  # s


@dataclass
class Conditions:
    frame_dt: float
    physics_dt: float
    gravity: np.ndarray  # (3,) m/s^2, y-up
    youngs_modulus: float  # Pa, solids
    cloth_youngs_modulus: float  # Pa, cloth and shells
    poisson_ratio: float
    damping: float  # s, Rayleigh (stiffness-proportional) damping
    density: float  # kg/m^3
    friction: float
    init_velocity: np.ndarray | None  # (3,) m/s, y-up
    init_angular_velocity: np.ndarray | None  # (3,) rad/s, y-up
    poke: Poke | None
    drag: Drag | None
    pin: bool
    actuation_amplitude: float  # rad or m
    actuation_frequency: float  # Hz
    rng: np.random.Generator  # the same stream, for the scene's own choices (regions, directions)

    def base_record(self) -> dict[str, float]:
        """The fields every scene applies: time steps and gravity."""
        return {
            "frame_dt": self.frame_dt,
            "physics_dt": self.physics_dt,
            **vector_fields("gravity", self.gravity),
        }

    def material_record(self, youngs_modulus: float) -> dict[str, float]:
        """The fields of a deformable material (a solid or a sheet)."""
        return {
            "youngs_modulus": youngs_modulus,
            "poisson_ratio": self.poisson_ratio,
            "damping": self.damping,
            "density": self.density,
            "friction": self.friction,
        }

    def drag_record(self) -> dict[str, float]:
        return vector_fields("drag_offset", self.drag.offset) | {
            "drag_start": self.drag.start,
            "drag_end": self.drag.end,
        }

    def poke_record(self, impulse: np.ndarray) -> dict[str, float]:
        """`impulse`: N s, y-up."""
        return vector_fields("poke_impulse", impulse) | {"poke_time": self.poke.time}

    def velocity_record(self) -> dict[str, float]:
        return vector_fields("init_velocity", self.init_velocity) | vector_fields(
            "init_angular_velocity", self.init_angular_velocity
        )


def vector_fields(prefix: str, v: np.ndarray) -> dict[str, float]:
    """{prefix_x, prefix_y, prefix_z} of a y-up vector."""
    return {f"{prefix}_{axis}": float(x) for axis, x in zip("xyz", v, strict=True)}


def log_uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    lo, hi = bounds
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def uniform(rng: np.random.Generator, bounds: list[float]) -> float:
    lo, hi = bounds
    return float(rng.uniform(lo, hi))


def unit_vector(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def tilted(gravity: np.ndarray, max_deg: float, rng: np.random.Generator) -> np.ndarray:
    """Gravity rotated by up to `max_deg` about a random axis perpendicular to it."""
    angle = np.deg2rad(rng.uniform(0, max_deg))
    axis = np.cross(gravity, unit_vector(rng))
    if np.linalg.norm(axis) < 1e-12:
        return gravity.copy()
    axis /= np.linalg.norm(axis)
    return gravity * np.cos(angle) + np.cross(axis, gravity) * np.sin(angle)  # Rodrigues, axis ⟂ gravity


def sample_conditions(spec: SequenceSpec, physics: PhysicsSpec) -> Conditions:
    """This sequence's conditions: a pure function of (condition_seed, physics ranges, frames, fps)."""
    rng = np.random.default_rng([spec.condition_seed, 0xC0D])
    frame_dt = 1.0 / spec.fps
    duration = (spec.frames - 1) * frame_dt
    gravity = tilted(np.asarray(physics.gravity, float), physics.gravity_tilt_deg, rng)
    youngs = log_uniform(rng, physics.youngs_modulus)
    cloth_youngs = log_uniform(rng, physics.cloth_youngs_modulus)
    poisson = uniform(rng, physics.poisson_ratio)
    damping = uniform(rng, physics.damping)
    density = uniform(rng, physics.density)
    friction = uniform(rng, physics.friction)
    has_velocity = rng.uniform() < physics.p_init_velocity
    velocity = uniform(rng, physics.init_speed) * unit_vector(rng)
    spin = uniform(rng, physics.init_spin) * unit_vector(rng)
    has_poke = rng.uniform() < physics.p_poke
    poke = Poke(uniform(rng, physics.poke_speed), frame_dt * int(rng.integers(1, max(2, spec.frames // 3))))
    has_drag = rng.uniform() < physics.p_drag
    direction = unit_vector(rng)
    direction[1] = abs(direction[1])  # never into the ground
    start = frame_dt * int(rng.integers(1, max(2, spec.frames // 4)))
    end = start + max(frame_dt, float(rng.uniform(0.3, 0.6)) * duration)
    drag = Drag(uniform(rng, physics.drag_distance) * direction, start, min(end, duration))
    pin = bool(rng.uniform() < physics.p_pin)
    amplitude = uniform(rng, physics.actuation_amplitude)
    frequency = uniform(rng, physics.actuation_frequency)
    if np.linalg.norm(gravity) < 1e-6 and not (has_velocity or has_poke or has_drag):
        has_velocity = True  # nothing else would move the object
    return Conditions(
        frame_dt=frame_dt,
        physics_dt=frame_dt / physics.substeps,
        gravity=gravity,
        youngs_modulus=youngs,
        cloth_youngs_modulus=cloth_youngs,
        poisson_ratio=poisson,
        damping=damping,
        density=density,
        friction=friction,
        init_velocity=velocity if has_velocity else None,
        init_angular_velocity=spin if has_velocity else None,
        poke=poke if has_poke else None,
        drag=drag if has_drag else None,
        pin=pin,
        actuation_amplitude=amplitude,
        actuation_frequency=frequency,
        rng=rng,
    )
