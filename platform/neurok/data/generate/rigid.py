"""Rigid parts for articulated and multi-body scenes.

A part is one MuJoCo body made of primitive pieces (boxes, capsules, spheres, rings). Each piece gives the
body its collision geoms and mass (MuJoCo integrates the geoms at the scene's density) and a surface mesh
in the body's frame. The recorded mesh is every piece merged, moved each frame by its body's pose, so each
part keeps its shape exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from neurok.data.generate import mjcf, regions
from neurok.data.generate.conditions import Conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.shapes import (
    Surface,
    box_surface,
    capsule_surface,
    ring_surface,
    sphere_surface,
)
from neurok.data.schema import FLAG_DRAGGED, FLAG_PINNED, FLAG_POKED

RING_SEGMENTS = 8  # capsules standing in for a ring in collisions


@dataclass
class Piece:
    kind: str  # box | capsule | sphere | ring | mesh
    # box: full sides; capsule: (radius, half-length); sphere: (radius,); ring: (major, minor); mesh: ()
    size: tuple[float, ...]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the body frame
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # capsules and rings lie along its z
    taper: float = 1.0  # boxes: thickness (y and z) at +x relative to -x; the collision box stays square
    surface: Surface | None = None  # meshes: the mesh itself (its own vertex count), named `name`
    name: str = ""

    def area(self) -> float:
        if self.kind == "box":
            x, y, z = self.size
            return 2 * (x * y + y * z + x * z)
        if self.kind == "capsule":
            r, half = self.size
            return 4 * np.pi * r**2 + 4 * np.pi * r * half
        if self.kind == "sphere":
            return 4 * np.pi * self.size[0] ** 2
        if self.kind == "mesh":
            a, b, c = (self.surface.vertices[self.surface.faces[:, k]] for k in range(3))
            return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2)
        major, minor = self.size
        return 4 * np.pi**2 * major * minor

    def geoms(self) -> str:
        frame = f'pos="{mjcf.numbers(self.pos)}" quat="{quat(self.rotation)}"'
        if self.kind == "box":
            return f'<geom type="box" size="{mjcf.numbers(np.asarray(self.size) / 2)}" {frame}/>'
        if self.kind in ("capsule", "sphere"):
            return f'<geom type="{self.kind}" size="{mjcf.numbers(self.size)}" {frame}/>'
        if self.kind == "mesh":  # collides as its convex hull
            return f'<geom type="mesh" mesh="{self.name}" {frame}/>'
        major, minor = self.size
        angles = np.linspace(0, 2 * np.pi, RING_SEGMENTS + 1)
        ring = major * np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
        ring = ring @ self.rotation.T + self.pos
        return "".join(
            f'<geom type="capsule" size="{minor:.9g}" fromto="{mjcf.numbers(ring[i : i + 2])}"/>'
            for i in range(RING_SEGMENTS)
        )

    def mesh(self, n: int) -> Surface:
        if self.kind == "box":
            surface = box_surface(np.asarray(self.size), n)
            if self.taper != 1.0:
                x = surface.vertices[:, 0]
                surface.vertices[:, 1:] *= (1 + (self.taper - 1) * (x - x.min()) / np.ptp(x))[:, None]
        elif self.kind == "capsule":
            surface = capsule_surface(*self.size, n)
        elif self.kind == "sphere":
            surface = sphere_surface(self.size[0], n)
        elif self.kind == "mesh":
            surface = self.surface
        else:
            surface = ring_surface(*self.size, n)
        return Surface(surface.vertices @ self.rotation.T + self.pos, surface.faces)


@dataclass
class Part:
    """One rigid body of a scene."""

    body: str
    pieces: list[Piece]
    static: bool = False  # welded to the world: its vertices are pinned
    collides: bool = True

    def geoms(self) -> str:
        xml = "".join(p.geoms() for p in self.pieces)
        return xml if self.collides else xml.replace("<geom ", '<geom contype="0" conaffinity="0" ')


def merge(surfaces: list[Surface]) -> Surface:
    offsets = np.cumsum([0] + [len(s.vertices) for s in surfaces[:-1]])
    return Surface(
        np.vstack([s.vertices for s in surfaces]),
        np.vstack([s.faces + o for s, o in zip(surfaces, offsets, strict=True)]),
    )


@dataclass
class Assembly:
    """The parts of a scene and their merged mesh (in body frames): vertex v belongs to `vertex_part[v]`."""

    parts: list[Part]
    local: Surface
    vertex_part: np.ndarray

    @classmethod
    def build(cls, parts: list[Part], target_vertices: int) -> Assembly:
        """Mesh every piece, sharing the vertex budget by surface area."""
        pieces = [(k, piece) for k, part in enumerate(parts) for piece in part.pieces]
        areas = np.array([piece.area() for _, piece in pieces])
        budgets = np.maximum(np.round(target_vertices * areas / areas.sum()).astype(int), 12)
        meshes = [piece.mesh(int(n)) for (_, piece), n in zip(pieces, budgets, strict=True)]
        labels = np.concatenate(
            [np.full(len(m.vertices), k) for (k, _), m in zip(pieces, meshes, strict=True)]
        )
        return cls(parts, merge(meshes), labels)

    def reader(self, model: mujoco.MjModel):
        """read(model, data) -> (V, 3) world positions of the merged mesh's vertices."""
        bodies = np.array([model.body(p.body).id for p in self.parts])[self.vertex_part]
        local = self.local.vertices

        def read(m: mujoco.MjModel, d: mujoco.MjData) -> np.ndarray:
            return d.xpos[bodies] + np.einsum("nij,nj->ni", d.xmat[bodies].reshape(-1, 3, 3), local)

        return read

    def asset_xml(self) -> str:
        """The mesh assets of mesh pieces (inertia from their convex hulls, as they collide)."""
        meshes = [
            f'<mesh name="{p.name}" vertex="{mjcf.numbers(p.surface.vertices)}" '
            f'face="{mjcf.ints(p.surface.faces)}" inertia="convex"/>'
            for part in self.parts
            for p in part.pieces
            if p.kind == "mesh"
        ]
        return f"<asset>{''.join(meshes)}</asset>" if meshes else ""

    def static_vertices(self) -> np.ndarray:
        return np.isin(self.vertex_part, [k for k, p in enumerate(self.parts) if p.static])


def quat(rotation: np.ndarray) -> str:
    q = np.empty(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(rotation, float).ravel())
    return mjcf.numbers(q)


def tune_servo(model: mujoco.MjModel, actuator: str, frequency: float, rayleigh: float) -> None:
    """Make a position actuator a servo of natural `frequency` (Hz) for its joint's inertia, damped by
    `rayleigh` seconds (kv = rayleigh * kp)."""
    a = model.actuator(actuator).id
    dof = model.jnt_dofadr[model.actuator_trnid[a, 0]]
    kp = model.dof_M0[dof] * (2 * np.pi * frequency) ** 2
    model.actuator_gainprm[a, 0] = kp
    model.actuator_biasprm[a, 1:3] = -kp, -rayleigh * kp


@dataclass
class RigidScene:
    """Parts in MJCF, ready to drop into a model: what articulated and multi-body scenes hand to `run`."""

    assembly: Assembly
    worldbody: str
    free_joints: list[str]  # loose roots: they take initial velocities
    extra: str = ""  # further MJCF sections (actuators, contact exclusions)
    grab_part: int | None = None  # the part a drag pulls, by `grab_point` (its body's frame); None: no drags
    grab_point: np.ndarray = field(default_factory=lambda: np.zeros(3))
    integrator: str = "implicitfast"
    refine: int = 1  # physics steps per recipe substep


def run(
    scene: RigidScene,
    spec: SequenceSpec,
    physics: PhysicsSpec,
    c: Conditions,
    record: dict[str, float],
    tune=None,
    drivers: list[mjcf.Driver] | None = None,
):
    """Simulate a rigid scene under its conditions (drag, poke, initial velocity) and record it.

    `tune(model)` adjusts the compiled model (servo gains, joint friction) before it runs.
    """
    assembly = scene.assembly
    timestep = c.physics_dt / scene.refine
    record = c.base_record() | record | {"physics_dt": timestep, "density": c.density, "friction": c.friction}
    flags = np.where(assembly.static_vertices(), FLAG_PINNED, 0).astype(np.uint8)
    extra = f'<default><geom density="{c.density:.9g}" friction="{c.friction:.9g} 0.005 0.0001"/></default>'
    extra += scene.extra + assembly.asset_xml()
    worldbody, grab = scene.worldbody, None
    if c.drag is not None and scene.grab_part is not None:
        grab = mjcf.Grab([assembly.parts[scene.grab_part].body], scene.grab_point[None], c.drag)
        worldbody += grab.worldbody_xml()
        extra += f"<equality>{grab.equality_xml()}</equality>"
        record |= c.drag_record()
        held = np.flatnonzero(assembly.vertex_part == scene.grab_part)  # flag the half nearest the point
        near = np.linalg.norm(assembly.local.vertices[held] - scene.grab_point, axis=1)
        flags[held[near <= np.median(near)]] |= FLAG_DRAGGED
    xml = mjcf.scene_xml(
        spec.name,
        timestep=timestep,
        gravity_y_up=c.gravity,
        friction=c.friction,
        worldbody=worldbody,
        integrator=scene.integrator,
        solver="Newton",
        extra=extra,
    )
    model = mjcf.compile_model(xml, spec.name)
    if tune:
        tune(model)
    read = assembly.reader(model)
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    rest = read(model, data)
    drivers = list(drivers or [])

    if grab:
        drivers.append(grab.driver(model, timestep))

    if c.poke is not None:
        movable = [k for k, p in enumerate(assembly.parts) if not p.static]
        push, region, impulse = poke_part(assembly, rest, model, data, c, movable, timestep)
        drivers.append(push.drive)
        flags[region] |= FLAG_POKED
        record |= c.poke_record(mjcf.to_y_up(impulse))

    setup = None
    if c.init_velocity is not None and scene.free_joints:
        record |= c.velocity_record()

        def setup(m, d) -> None:
            velocity, spin = mjcf.to_z_up(c.init_velocity), mjcf.to_z_up(c.init_angular_velocity)
            set_rigid_motion(m, d, scene.free_joints, velocity, spin, rest.mean(axis=0))

    frames = mjcf.record(
        model, spec.name, spec.frames, physics.substeps * scene.refine, read, setup=setup, drivers=drivers
    )
    return mjcf.sequence(spec, frames, assembly.local.faces, flags, record)


def set_rigid_motion(model, data, free_joints: list[str], velocity, spin, centre) -> None:
    """Give the bodies on `free_joints` the rigid velocity field velocity + spin x (x - centre), z-up.

    Their descendants, at rest on their joints, move with them."""
    mujoco.mj_kinematics(model, data)
    for name in free_joints:
        joint = model.joint(name).id
        body, adr = model.jnt_bodyid[joint], model.jnt_dofadr[joint]
        data.qvel[adr : adr + 3] = velocity + np.cross(spin, data.xpos[body] - centre)
        data.qvel[adr + 3 : adr + 6] = data.xmat[body].reshape(3, 3).T @ spin  # in the body's frame


def poke_part(
    assembly: Assembly, rest, model, rest_data, c: Conditions, candidates: list[int], timestep: float
):
    """A poke on one movable part: (push, poked vertices, impulse z-up).

    The impulse is the poke speed times the part's mass, at a random surface point, aimed through the
    part's centre of mass: a push that spins a small part about an off-centre point is more than the
    time step can follow (a chain link hit near its end spins at hundreds of rad/s).
    """
    rng = c.rng
    part = int(rng.choice(candidates))
    own = np.flatnonzero(assembly.vertex_part == part)
    centre = int(rng.choice(own))
    region = np.intersect1d(regions.patch(rest, centre, 0.25 * float(np.ptp(rest[own], axis=0).max())), own)
    body = model.body(assembly.parts[part].body).id
    inward = rest_data.xipos[body] - rest[centre]
    impulse = c.poke.speed * model.body_mass[body] * inward / np.linalg.norm(inward)
    return mjcf.Push.impulse([body], impulse[None], c.poke.time, timestep, c.frame_dt), region, impulse
