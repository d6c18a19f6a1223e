"""Multi-body systems in contact: a chain of capsule links on ball joints, and a stack of loose bodies.

A chain either hangs from its first link (welded to the world, so pinned) and swings down, or drops as a
whole onto the ground; a stack falls onto itself and the ground from a slightly spread-out rest pose, or
stands on a welded bottom body (with `asset_packs`, meshes from the packs join its primitives). Drags pull
the chain's last link (or the stack's top body) by a point with a mocap body; pokes hit one body; initial
velocities move every loose body rigidly."""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from neurok.data.generate import mjcf, rigid
from neurok.data.generate.assets import asset_surface
from neurok.data.generate.conditions import sample_conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.rigid import Assembly, Part, Piece, quat
from neurok.data.generate.shapes import rotation_about
from neurok.data.schema import Sequence

CATEGORIES = ("multibody/chain", "multibody/stack")
LINK_BEND = 1.0  # rad: how far a link can swing on the previous one (real links interlock)
# Chain joints have a little friction: each link's swing relaxes in about this many seconds (a damping of
# its inertia over it). Without it a falling chain whips its last links faster than any time step follows.
LINK_RELAXATION = 0.5
REFINE = 2  # physics steps per recipe substep: whipping chain ends need them, and chains are cheap
Y_AXIS_TO_X = rotation_about((0, 1, 0), np.pi / 2)  # a capsule's z axis laid along x


@dataclass
class System:
    """A multi-body system in MuJoCo's frame, before meshing."""

    parts: list[Part]
    worldbody: str
    free_joints: list[str]
    grab_part: int  # the part a drag pulls, by `grab_point` (body frame)
    grab_point: np.ndarray
    contact: str = ""  # MJCF <contact> content


def chain(rng: np.random.Generator, yaw: np.ndarray, pinned: bool) -> System:
    n = int(rng.integers(6, 13))
    length, radius = rng.uniform(0.04, 0.07), rng.uniform(0.008, 0.015)
    bends = rng.uniform(-0.5, 0.5, size=n)  # rad, in the horizontal plane: the rest pose is a wiggle
    height = rng.uniform(0.15, 0.4)
    link = Piece("capsule", (radius, length / 2), (length / 2, 0, 0), Y_AXIS_TO_X)
    parts, xml = [Part(f"link{k}", [link], static=pinned and k == 0) for k in range(n)], ""
    for k in reversed(range(n)):  # built from the far end inwards, each link inside its parent
        turn = rotation_about((0, 0, 1), bends[k])
        if k == 0:
            joint = "" if pinned else '<freejoint name="root"/>'
            head = f'<body name="link0" pos="0 0 {height:.9g}" quat="{quat(yaw @ turn)}">{joint}'
        else:
            joint = f'<joint name="ball{k}" type="ball" range="0 {LINK_BEND:.9g}"/>'
            head = f'<body name="link{k}" pos="{length:.9g} 0 0" quat="{quat(turn)}">{joint}'
        xml = head + parts[k].geoms() + xml + "</body>"
    free = [] if pinned else ["root"]
    # MuJoCo only skips parent-child contacts when the parent moves; the overlapping ends of a welded first
    # link and the next would push each other forever.
    contact = '<exclude body1="link0" body2="link1"/>' if pinned else ""
    return System(parts, xml, free, n - 1, np.array([length, 0.0, 0.0]), contact)


def stack(rng: np.random.Generator, yaw: np.ndarray, pinned: bool, packs: list[str]) -> System:
    n = int(rng.integers(3, 7))
    parts, xml, free = [], "", []
    z, xy = 0.0, np.zeros(2)
    for k in range(n):
        kind = ["box", "box", "sphere", "capsule", "asset"][rng.integers(5 if packs else 4)]
        if kind == "asset":
            surface = asset_surface(packs, rng, rng.uniform(0.03, 0.06))
            piece = Piece("mesh", (), surface=surface, name=f"asset{k}")
            half_height = -surface.vertices[:, 2].min()  # centred on its bounding box
        elif kind == "box":
            size = tuple(rng.uniform(0.04, 0.12, size=3))
            piece, half_height = Piece("box", size), size[2] / 2
        elif kind == "sphere":
            r = rng.uniform(0.025, 0.05)
            piece, half_height = Piece("sphere", (r,)), r
        else:
            r, half = rng.uniform(0.02, 0.035), rng.uniform(0.02, 0.05)
            piece, half_height = Piece("capsule", (r, half), rotation=Y_AXIS_TO_X), r
        parts.append(Part(f"body{k}", [piece], static=pinned and k == 0))
        z += half_height + (rng.uniform(0.005, 0.04) if k else 0.0)
        xy = xy + (rng.uniform(-0.02, 0.02, size=2) if k else 0.0)
        pos = yaw @ np.array([*xy, 0.0]) + [0, 0, z]
        turn = yaw @ rotation_about((0, 0, 1), rng.uniform(0, np.pi))
        joint = "" if parts[-1].static else f'<freejoint name="free{k}"/>'
        frame = f'pos="{mjcf.numbers(pos)}" quat="{quat(turn)}"'
        xml += f'<body name="body{k}" {frame}>{joint}{parts[-1].geoms()}</body>'

        if joint:
            free.append(f"free{k}")
        z += half_height
    return System(parts, xml, free, n - 1, np.zeros(3))


def assemble(spec: SequenceSpec, pinned: bool) -> tuple[System, Assembly]:
    """The system at rest: a pure function of the shape seed (and whether its first body is welded)."""
    rng = np.random.default_rng([spec.shape_seed, 0x3B0D])
    kind = spec.category.split("/", 1)[1]
    yaw = rotation_about((0, 0, 1), rng.uniform(0, 2 * np.pi))
    system = chain(rng, yaw, pinned) if kind == "chain" else stack(rng, yaw, pinned, spec.asset_packs)
    return system, Assembly.build(system.parts, spec.target_vertices)


def simulate(spec: SequenceSpec, physics: PhysicsSpec) -> Sequence:
    c = sample_conditions(spec, physics)
    system, assembly = assemble(spec, c.pin)
    scene = rigid.RigidScene(
        assembly,
        system.worldbody,
        system.free_joints,
        extra=f"<contact>{system.contact}</contact>" if system.contact else "",
        grab_part=system.grab_part,
        grab_point=system.grab_point,
        integrator="RK4",
        refine=REFINE,
    )

    def add_joint_friction(model: mujoco.MjModel) -> None:
        for joint in np.flatnonzero(model.jnt_type == mujoco.mjtJoint.mjJNT_BALL):
            dofs = model.jnt_dofadr[joint] + np.arange(3)
            model.dof_damping[dofs] = model.body_inertia[model.jnt_bodyid[joint]].max() / LINK_RELAXATION

    return rigid.run(scene, spec, physics, c, {}, tune=add_joint_friction)
