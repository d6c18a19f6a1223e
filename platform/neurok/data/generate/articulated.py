"""Articulated objects: rigid parts on one actuated hinge or slide joint, procedurally sized.

A position servo drives the joint along `rest + amplitude * sin(2 pi f t)` (clipped to the joint's range)
against gravity and contact; loose objects (laptop, scissors) start just above the ground and may be
thrown, fixed ones (door, drawer) have a static frame whose vertices are flagged pinned. The servo's
stiffness follows the joint's inertia (natural frequency SERVO_HZ); its damping is Rayleigh
(kv = damping * kp), with a floor so the joint does not ring forever.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurok.data.generate import mjcf, rigid
from neurok.data.generate.conditions import sample_conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.rigid import Assembly, Part, Piece, quat
from neurok.data.generate.shapes import rotation_about
from neurok.data.schema import Sequence

CATEGORIES = ("articulated/laptop", "articulated/door", "articulated/drawer", "articulated/scissors")
SERVO_HZ = 4.0
MIN_DAMPING_RATIO = 0.3  # of the servo; the sampled damping adds to it


@dataclass
class Mechanism:
    """An articulated object in MuJoCo's frame, before meshing."""

    parts: list[Part]
    worldbody: str
    joint_range: tuple[float, float]
    rest: float  # the joint's value in the rest pose (qpos0)
    prismatic: bool
    free_joint: str | None  # the root's free joint, for loose objects


def hinge_xml(name: str, axis, rest: float, lo: float, hi: float) -> str:
    return (
        f'<joint name="{name}" type="hinge" axis="{mjcf.numbers(axis)}" ref="{rest:.9g}" '
        f'range="{lo:.9g} {hi:.9g}"/>'
    )


def laptop(rng: np.random.Generator, yaw: np.ndarray) -> Mechanism:
    w, d = rng.uniform(0.26, 0.36), rng.uniform(0.18, 0.25)
    base_h, lid_h = rng.uniform(0.012, 0.022), rng.uniform(0.005, 0.01)
    rest, lo, hi = rng.uniform(0.6, 1.9), 0.05, 2.4
    base = Part("base", [Piece("box", (w, d, base_h))])
    lid = Part("lid", [Piece("box", (w, d, lid_h), (0, -d / 2, lid_h / 2))])
    lift = rng.uniform(0.005, 0.05)
    xml = f"""
    <body name="base" pos="0 0 {lift + base_h / 2:.9g}" quat="{quat(yaw)}">
      <freejoint name="root"/>{base.geoms()}
      <body name="lid" pos="0 {d / 2:.9g} {base_h / 2:.9g}" quat="{quat(rotation_about((-1, 0, 0), rest))}">
        {hinge_xml("joint", (-1, 0, 0), rest, lo, hi)}{lid.geoms()}
      </body>
    </body>"""
    return Mechanism([base, lid], xml, (lo, hi), rest, False, "root")


def door(rng: np.random.Generator, yaw: np.ndarray) -> Mechanism:
    h, w, t = rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.45), rng.uniform(0.015, 0.03)
    post = 0.03
    rest, lo, hi = rng.uniform(0.0, 0.8), 0.0, 1.9
    frame = Part(
        "frame",
        [
            Piece("box", (post, 2 * post, h + post), (-(w + post) / 2 - 0.003, 0, (h + post) / 2)),
            Piece("box", (post, 2 * post, h + post), ((w + post) / 2 + 0.003, 0, (h + post) / 2)),
            Piece("box", (w + 2 * post + 0.006, 2 * post, post), (0, 0, h + post / 2 + 0.003)),
        ],
        static=True,
        collides=False,
    )
    knob = (0.85 * w, 0, 0.45 * h)
    leaf = Part(
        "leaf",
        [
            Piece("box", (w, t, h), (w / 2, 0, h / 2)),
            Piece("box", (0.08 * w, t + 0.05, 0.02), knob),
        ],
    )
    xml = f"""
    <body name="frame" quat="{quat(yaw)}">{frame.geoms()}
      <body name="leaf" pos="{-w / 2:.9g} 0 0.002" quat="{quat(rotation_about((0, 0, 1), rest))}">
        {hinge_xml("joint", (0, 0, 1), rest, lo, hi)}{leaf.geoms()}
      </body>
    </body>"""
    return Mechanism([frame, leaf], xml, (lo, hi), rest, False, None)


def drawer(rng: np.random.Generator, yaw: np.ndarray) -> Mechanism:
    w, d, h = rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.4), rng.uniform(0.12, 0.25)
    t, gap = 0.012, 0.004
    cabinet = Part(
        "cabinet",
        [
            Piece("box", (w, d, t), (0, 0, t / 2)),
            Piece("box", (w, d, t), (0, 0, h - t / 2)),
            Piece("box", (t, d, h - 2 * t), (-(w - t) / 2, 0, h / 2)),
            Piece("box", (t, d, h - 2 * t), ((w - t) / 2, 0, h / 2)),
            Piece("box", (w - 2 * t, t, h - 2 * t), (0, (d - t) / 2, h / 2)),
        ],
        static=True,
        collides=False,
    )
    iw, idp, ih = w - 2 * t - 2 * gap, d - t - gap, h - 2 * t - 2 * gap  # the drawer's outer box
    z0 = t + gap
    box = Part(
        "drawer",
        [
            Piece("box", (iw, idp, t), (0, 0, z0 + t / 2)),
            Piece("box", (t, idp, ih - t), (-(iw - t) / 2, 0, z0 + t + (ih - t) / 2)),
            Piece("box", (t, idp, ih - t), ((iw - t) / 2, 0, z0 + t + (ih - t) / 2)),
            Piece("box", (iw - 2 * t, t, ih - t), (0, (idp - t) / 2, z0 + t + (ih - t) / 2)),
            Piece("box", (w - 0.004, t, h - 0.004), (0, -(d + t) / 2, h / 2)),
            Piece("box", (0.3 * w, 0.025, 0.02), (0, -d / 2 - t - 0.0125, h / 2)),
        ],
    )
    travel = 0.85 * d
    rest = rng.uniform(0.1, 0.5) * d
    xml = f"""
    <body name="cabinet" quat="{quat(yaw)}">{cabinet.geoms()}
      <body name="drawer" pos="0 {-rest:.9g} 0">
        <joint name="joint" type="slide" axis="0 -1 0" ref="{rest:.9g}" range="0 {travel:.9g}"/>{box.geoms()}
      </body>
    </body>"""
    return Mechanism([cabinet, box], xml, (0.0, travel), rest, True, None)


def scissors(rng: np.random.Generator, yaw: np.ndarray) -> Mechanism:
    blade, width, thick = rng.uniform(0.07, 0.12), rng.uniform(0.012, 0.02), rng.uniform(0.002, 0.003)
    shank, major, minor = rng.uniform(0.03, 0.05), rng.uniform(0.015, 0.025), rng.uniform(0.004, 0.006)
    rest, lo, hi = rng.uniform(0.15, 0.6), 0.0, 1.3

    def half(name: str) -> Part:
        return Part(
            name,
            [
                Piece("box", (blade, width, thick), (blade / 2, 0, 0), taper=0.3),
                Piece("box", (shank, 0.6 * width, thick), (-shank / 2, 0, 0)),
                Piece("ring", (major, minor), (-shank - major, 0, 0)),
            ],
        )

    a, b = half("blade_a"), half("blade_b")
    a.pieces.append(Piece("capsule", (0.004, thick)))  # the pivot screw
    lift = rng.uniform(0.005, 0.04) + minor
    xml = f"""
    <body name="blade_a" pos="0 0 {lift:.9g}" quat="{quat(yaw @ rotation_about((0, 0, 1), rest / 2))}">
      <freejoint name="root"/>{a.geoms()}
      <body name="blade_b" pos="0 0 {thick:.9g}" quat="{quat(rotation_about((0, 0, -1), rest))}">
        {hinge_xml("joint", (0, 0, -1), rest, lo, hi)}{b.geoms()}
      </body>
    </body>"""
    return Mechanism([a, b], xml, (lo, hi), rest, False, "root")


BUILDERS = {"laptop": laptop, "door": door, "drawer": drawer, "scissors": scissors}


def assemble(spec: SequenceSpec) -> tuple[Mechanism, Assembly]:
    """The object at rest: a pure function of the shape seed."""
    rng = np.random.default_rng([spec.shape_seed, 0xA27])
    kind = spec.category.split("/", 1)[1]
    mechanism = BUILDERS[kind](rng, rotation_about((0, 0, 1), rng.uniform(0, 2 * np.pi)))
    return mechanism, Assembly.build(mechanism.parts, spec.target_vertices)


def simulate(spec: SequenceSpec, physics: PhysicsSpec) -> Sequence:
    c = sample_conditions(spec, physics)
    mechanism, assembly = assemble(spec)
    lo, hi = mechanism.joint_range
    # Slides take the sampled amplitude as a share of their travel (1 = half of it); hinges in radians.
    amplitude = c.actuation_amplitude * (hi - lo) / 2 if mechanism.prismatic else c.actuation_amplitude
    damping = 2 * MIN_DAMPING_RATIO / (2 * np.pi * SERVO_HZ) + c.damping
    scene = rigid.RigidScene(
        assembly,
        mechanism.worldbody,
        [mechanism.free_joint] if mechanism.free_joint else [],
        extra='<actuator><position name="servo" joint="joint" kp="1"/></actuator>',
    )

    def actuate(m, d, step: int) -> None:
        phase = 2 * np.pi * c.actuation_frequency * d.time
        d.ctrl[0] = np.clip(mechanism.rest + amplitude * np.sin(phase), lo, hi)

    record = {
        "damping": damping,
        "actuation_amplitude": amplitude,
        "actuation_frequency": c.actuation_frequency,
    }
    return rigid.run(
        scene,
        spec,
        physics,
        c,
        record,
        tune=lambda model: rigid.tune_servo(model, "servo", SERVO_HZ, damping),
        drivers=[actuate],
    )
