"""Cloth and shells: a MuJoCo flex of dimension 2 with membrane and bending elasticity (`elastic2d="both"`).

Cloth is always held: pinned at corners, an edge or its ends, or draped over a collider (a ball, box or
post under a square; a rail across a strip). Shells (spherical caps) drop on the ground rim- or pole-first,
or hang from part of their rim. Every flex vertex is a body with three slide joints, so pins are pinned
vertices, pokes are forces on a patch of vertex bodies and drags move a patch with mocap bodies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurok.data.generate import mjcf, regions
from neurok.data.generate.conditions import Conditions, sample_conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.shapes import Surface, rotation_about, sheet, spherical_cap
from neurok.data.schema import FLAG_DRAGGED, FLAG_PINNED, FLAG_POKED, Sequence

CATEGORIES = ("cloth/square", "cloth/strip", "shell/dome")
THICKNESS = {"cloth": 2e-4, "shell": 1e-3}  # m; bending stiffness grows with its cube
FLEX = "sheet"


@dataclass
class Sheet:
    """A rest sheet placed in the world (z-up), with the vertex sets it may be pinned by."""

    surface: Surface
    pin_sets: list[np.ndarray]
    thickness: float

    @property
    def size(self) -> float:
        return float(np.ptp(self.surface.vertices, axis=0).max())


def rest_sheet(spec: SequenceSpec) -> Sheet:
    """The object's rest sheet in the world: a pure function of the shape seed."""
    rng = np.random.default_rng([spec.shape_seed, 0xC107])
    kind = spec.category.split("/", 1)[1]
    if kind == "dome":
        surface, rim = spherical_cap(rng.uniform(0.08, 0.14), rng.uniform(1.0, 1.9), spec.target_vertices)
        if rng.uniform() < 0.5:  # a bowl, opening up, instead of a dome: turned over about x
            surface.vertices *= [1, -1, -1]
        arcs = np.array_split(rim, 4)
        pin_sets = arcs + [rim[:: max(len(rim) // 3, 1)][:3]]
        height = rng.uniform(0.02, 0.15)
        thickness = THICKNESS["shell"]
    else:
        if kind == "square":
            side = rng.uniform(0.3, 0.5)
            surface, nu, nv = sheet(side, side, spec.target_vertices)
        else:
            surface, nu, nv = sheet(rng.uniform(0.35, 0.6), rng.uniform(0.06, 0.12), spec.target_vertices)
        grid = np.arange(nu * nv).reshape(nu, nv)
        ends = [grid[0], grid[-1]]
        if kind == "square":
            corners = [grid[:2, :2], grid[:2, -2:], grid[-2:, -2:], grid[-2:, :2]]  # around the ring
            pin_sets = [c.ravel() for c in corners]
            pin_sets += [np.concatenate([corners[k].ravel(), corners[(k + 1) % 4].ravel()]) for k in range(4)]
            pin_sets += ends + [grid[:, 0], grid[:, -1]]
        else:
            pin_sets = ends + [np.concatenate(ends)]
        height = rng.uniform(0.3, 0.5)
        thickness = THICKNESS["cloth"]
    rotation = rotation_about((0, 0, 1), rng.uniform(0, 2 * np.pi))
    surface.vertices = surface.vertices @ rotation.T
    surface.vertices[:, 2] += height - surface.vertices[:, 2].min()
    return Sheet(surface, pin_sets, thickness)


def collider_xml(kind: str, sheet: Sheet, rng: np.random.Generator) -> str:
    """A static shape under the sheet for it to drape over (its top stays below the sheet)."""
    v = sheet.surface.vertices
    centre, height = v.mean(axis=0), v[:, 2].min()
    if kind == "strip":  # a horizontal rail across the strip
        along = np.linalg.svd(v[:, :2] - centre[:2])[2][0]
        across = np.array([-along[1], along[0], 0.0])
        pos = centre + np.append(along * rng.uniform(-0.15, 0.15) * sheet.size, 0)
        pos[2] = rng.uniform(0.4, 0.8) * height
        r = rng.uniform(0.01, 0.03)
        ends = np.stack([pos - 0.15 * across, pos + 0.15 * across])
        return f'<geom type="capsule" size="{r:.9g}" fromto="{mjcf.numbers(ends)}"/>'
    x, y = centre[:2] + rng.uniform(-0.2, 0.2, size=2) * sheet.size
    top = rng.uniform(0.3, 0.8) * height
    shape = rng.integers(3)
    if shape == 0:
        r = min(rng.uniform(0.06, 0.12), top / 2)
        return f'<geom type="sphere" size="{r:.9g}" pos="{mjcf.numbers([x, y, top - r])}"/>'
    half = rng.uniform(0.04, 0.1, size=2)
    geom = "box" if shape == 1 else "cylinder"
    size = [*half, top / 2] if geom == "box" else [half[0], top / 2]
    return f'<geom type="{geom}" size="{mjcf.numbers(size)}" pos="{mjcf.numbers([x, y, top / 2])}"/>'


def flexcomp_xml(sheet: Sheet, c: Conditions, mass: float, pinned: np.ndarray) -> str:
    pins = f'<pin id="{mjcf.ints(pinned)}"/>' if len(pinned) else ""
    return f"""
    <flexcomp name="{FLEX}" type="direct" dim="2" radius="0.003" mass="{mass:.9g}"
              point="{mjcf.numbers(sheet.surface.vertices)}" element="{mjcf.ints(sheet.surface.faces)}">
      <edge equality="false"/>
      <elasticity young="{c.cloth_youngs_modulus:.9g}" poisson="{c.poisson_ratio:.9g}"
                  thickness="{sheet.thickness:.9g}" damping="{c.damping:.9g}" elastic2d="both"/>
      <contact selfcollide="auto" condim="3" friction="{c.friction:.9g} 0.005 0.0001"/>
      {pins}
    </flexcomp>"""


def simulate(spec: SequenceSpec, physics: PhysicsSpec) -> Sequence:
    c = sample_conditions(spec, physics)
    rng = c.rng
    kind = spec.category.split("/", 1)[1]
    sheet = rest_sheet(spec)
    vertices, faces = sheet.surface.vertices, sheet.surface.faces
    n_vertices = len(vertices)
    a, b, d = (vertices[faces[:, k]] for k in range(3))
    mass = c.density * sheet.thickness * float(np.linalg.norm(np.cross(b - a, d - a), axis=1).sum() / 2)
    record = c.base_record() | c.material_record(c.cloth_youngs_modulus)
    flags = np.zeros(n_vertices, np.uint8)

    pinned, collider = np.zeros(0, int), ""
    if c.pin or (kind == "strip" and rng.uniform() < 0.5):  # strips hang from their ends as often as not
        pinned = np.unique(sheet.pin_sets[rng.integers(len(sheet.pin_sets))])
        flags[pinned] = FLAG_PINNED
    elif kind != "dome":
        collider = collider_xml(kind, sheet, rng)
    movable = np.setdiff1d(np.arange(n_vertices), pinned)

    held_bodies = None
    if c.drag is not None:
        held = np.setdiff1d(regions.patch(vertices, rng.choice(movable), 0.06 * sheet.size), pinned)
        held_bodies = [f"{FLEX}_{i}" for i in held]
        flags[held] |= FLAG_DRAGGED
        record |= c.drag_record()
    worldbody = collider + flexcomp_xml(sheet, c, mass, pinned)
    model, drivers = mjcf.flex_scene(spec.name, c, worldbody, held_bodies)
    vertex_bodies = model.flex_vertbodyid[model.flex_vertadr[0] : model.flex_vertadr[0] + n_vertices]

    if c.poke is not None:  # an impulse on a patch, from either side
        centre = rng.choice(movable)
        region = np.setdiff1d(regions.patch(vertices, centre, 0.12 * sheet.size), pinned)
        normal = regions.vertex_normals(vertices, faces)[centre] * rng.choice([-1.0, 1.0])
        impulse = c.poke.speed * mass * len(region) / n_vertices * regions.push_direction(normal, rng)
        share = np.tile(impulse / len(region), (len(region), 1))
        drivers.append(
            mjcf.Push.impulse(vertex_bodies[region], share, c.poke.time, c.physics_dt, c.frame_dt).drive
        )
        flags[region] |= FLAG_POKED
        record |= c.poke_record(mjcf.to_y_up(impulse))

    setup = None
    if c.init_velocity is not None:
        record |= c.velocity_record()

        def setup(m, d) -> None:
            mjcf.set_point_velocities(
                m,
                d,
                vertex_bodies[movable],
                vertices[movable],
                mjcf.to_z_up(c.init_velocity),
                mjcf.to_z_up(c.init_angular_velocity),
                vertices.mean(axis=0),
            )

    def read(m, d) -> np.ndarray:
        return d.flexvert_xpos[:n_vertices]

    frames = mjcf.record(model, spec.name, spec.frames, physics.substeps, read, setup=setup, drivers=drivers)
    return mjcf.sequence(spec, frames, faces, flags, record)
