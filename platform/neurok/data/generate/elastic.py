"""Elastic solids: a MuJoCo flex of dimension 3 (Saint Venant-Kirchhoff tetrahedra) dropped on the ground,
or clamped on one side, then poked, dragged or thrown.

The flex's vertices are the rest shape's surface vertices plus the interior anchors of its tetrahedral
filling; its degrees of freedom are the nodes of a coarse trilinear grid over the bounding box
(`dof="trilinear"`), so the cost follows the grid, not the mesh, while contacts use the full surface.
Pins, pokes and drags act on grid nodes; a surface vertex is flagged when those nodes carry at least half
of its interpolation weight (all of it for pins, so flagged pinned vertices stay exactly put).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neurok.data.generate import mjcf, regions
from neurok.data.generate.conditions import Conditions, sample_conditions
from neurok.data.generate.recipe import PhysicsSpec, SequenceSpec
from neurok.data.generate.shapes import SOLIDS, Solid, enclosed_volume, random_rotation, tet_volumes
from neurok.data.schema import FLAG_DRAGGED, FLAG_PINNED, FLAG_POKED, Sequence

CATEGORIES = tuple(f"elastic/{kind}" for kind in SOLIDS)
CELLS = 6  # interpolation cells along the longest side of the bounding box
FLEX = "solid"


@dataclass
class ElasticBody:
    """A rest shape placed in the world (z-up), with its interpolation grid."""

    solid: Solid
    lo: np.ndarray  # (3,) grid corner
    hi: np.ndarray  # (3,) opposite corner
    cells: np.ndarray  # (3,) cells per axis

    @property
    def shape(self) -> tuple[int, int, int]:
        nx, ny, nz = self.cells + 1
        return int(nx), int(ny), int(nz)

    def node_index(self, i, j, k):
        _, ny, nz = self.shape
        return (np.asarray(i) * ny + j) * nz + k

    def node_positions(self) -> np.ndarray:
        axes = [np.linspace(self.lo[a], self.hi[a], self.shape[a]) for a in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)

    def node_body(self, node: int) -> str:
        _, ny, nz = self.shape
        return f"{FLEX}_{node // (ny * nz)}_{node // nz % ny}_{node % nz}"

    def centroid(self) -> np.ndarray:
        points, tets = self.solid.points, self.solid.tets
        volumes = np.abs(tet_volumes(points, tets))
        return (points[tets].mean(axis=1) * volumes[:, None]).sum(axis=0) / volumes.sum()

    def weights(self, x: np.ndarray) -> np.ndarray:
        """(n, nodes) trilinear interpolation weights of points x, as MuJoCo interpolates the vertices."""
        s = (x - self.lo) / (self.hi - self.lo) * self.cells
        cell = np.clip(np.floor(s).astype(int), 0, self.cells - 1)
        u = s - cell
        w = np.zeros((len(x), int(np.prod(self.shape))))
        rows = np.arange(len(x))
        for corner in np.ndindex(2, 2, 2):
            c = np.array(corner)
            weight = np.prod(np.where(c == 1, u, 1 - u), axis=1)
            node = self.node_index(*(cell + c).T)
            np.add.at(w, (rows, node), weight)
        return w


def rest_body(spec: SequenceSpec) -> ElasticBody:
    """The object's rest shape in the world: a pure function of the shape seed."""
    rng = np.random.default_rng([spec.shape_seed, 0xE1A5])
    kind = spec.category.split("/", 1)[1]
    solid = SOLIDS[kind](rng, spec.target_vertices, rng.uniform(0.08, 0.14))
    rotation = random_rotation(rng)
    surface = solid.surface
    surface.vertices = surface.vertices @ rotation.T
    solid.interior = solid.interior @ rotation.T
    lo, hi = surface.vertices.min(axis=0), surface.vertices.max(axis=0)
    shift = np.array([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, rng.uniform(0.02, 0.2) - lo[2]])
    surface.vertices += shift
    solid.interior += shift
    extent = hi - lo
    cells = np.maximum(np.round(CELLS * extent / extent.max()).astype(int), 1)
    return ElasticBody(solid, lo + shift, hi + shift, cells)


def pinned_nodes(body: ElasticBody, rng: np.random.Generator) -> np.ndarray:
    """Two outer layers of grid nodes on one side (not the bottom): the object is clamped there."""
    sides = [(axis, sign) for axis in range(3) for sign in (-1, 1) if (axis, sign) != (2, -1)]
    deep = [(a, s) for a, s in sides if body.cells[a] >= 3]
    axis, sign = (deep or sides)[rng.integers(len(deep or sides))]
    layers = 2 if deep else 1
    index = np.stack(np.meshgrid(*map(np.arange, body.shape), indexing="ij"), -1).reshape(-1, 3)[:, axis]
    keep = index < layers if sign < 0 else index > body.cells[axis] - layers
    return np.flatnonzero(keep)


def flexcomp_xml(body: ElasticBody, c: Conditions, mass: float, pinned: np.ndarray) -> str:
    pins = f'<pin id="{mjcf.ints(pinned)}"/>' if len(pinned) else ""
    return f"""
    <flexcomp name="{FLEX}" type="direct" dim="3" dof="trilinear" cellcount="{mjcf.ints(body.cells)}"
              radius="0.002" mass="{mass:.9g}" point="{mjcf.numbers(body.solid.points)}"
              element="{mjcf.ints(body.solid.tets)}">
      <edge equality="false"/>
      <elasticity young="{c.youngs_modulus:.9g}" poisson="{c.poisson_ratio:.9g}" damping="{c.damping:.9g}"/>
      <contact selfcollide="none" condim="3" friction="{c.friction:.9g} 0.005 0.0001"/>
      {pins}
    </flexcomp>"""


def simulate(spec: SequenceSpec, physics: PhysicsSpec) -> Sequence:
    c = sample_conditions(spec, physics)
    rng = c.rng
    body = rest_body(spec)
    surface = body.solid.surface
    n_vertices = len(surface.vertices)
    mass = c.density * enclosed_volume(surface)
    weights = body.weights(surface.vertices)  # (V, nodes)
    nodes = body.node_positions()
    record = c.base_record() | c.material_record(c.youngs_modulus)
    flags = np.zeros(n_vertices, np.uint8)

    pinned = pinned_nodes(body, rng) if c.pin else np.zeros(0, int)
    held_weight = weights[:, pinned].sum(axis=1)
    flags[held_weight >= 1 - 1e-9] |= FLAG_PINNED
    movable = np.flatnonzero(held_weight < 0.5)

    held_bodies = None
    if c.drag is not None:  # the grid nodes of the cell under a random vertex
        grabbed = np.setdiff1d(np.flatnonzero(weights[rng.choice(movable)] > 0), pinned)
        held_bodies = [body.node_body(n) for n in grabbed]
        flags[weights[:, grabbed].sum(axis=1) >= 0.5] |= FLAG_DRAGGED
        record |= c.drag_record()
    model, drivers = mjcf.flex_scene(spec.name, c, flexcomp_xml(body, c, mass, pinned), held_bodies)
    # Pinned nodes, and nodes no vertex depends on, sit on the world body (id 0).
    node_bodies = model.flex_nodebodyid[model.flex_nodeadr[0] : model.flex_nodeadr[0] + len(nodes)]

    if c.poke is not None:  # an impulse on a surface patch, shared out to the nodes by their weights
        centre = rng.choice(movable)
        region = regions.patch(surface.vertices, centre, 0.2 * float(np.ptp(surface.vertices, axis=0).max()))
        normal = regions.vertex_normals(surface.vertices, surface.faces)[centre]
        impulse = c.poke.speed * mass * len(region) / n_vertices * regions.push_direction(normal, rng)
        share = weights[region].sum(axis=0)
        share[pinned] = 0
        pushed = np.flatnonzero(share)
        share = share[pushed] / share.sum()
        push = mjcf.Push.impulse(
            node_bodies[pushed], np.outer(share, impulse), c.poke.time, c.physics_dt, c.frame_dt
        )
        drivers.append(push.drive)
        flags[region] |= FLAG_POKED
        record |= c.poke_record(mjcf.to_y_up(impulse))

    setup = None
    if c.init_velocity is not None:
        record |= c.velocity_record()
        moving = np.flatnonzero(node_bodies)

        def setup(m, d) -> None:
            mjcf.set_point_velocities(
                m,
                d,
                node_bodies[moving],
                nodes[moving],
                mjcf.to_z_up(c.init_velocity),
                mjcf.to_z_up(c.init_angular_velocity),
                body.centroid(),
            )

    def read(m, d) -> np.ndarray:
        return d.flexvert_xpos[:n_vertices]  # the surface vertices come first

    frames = mjcf.record(model, spec.name, spec.frames, physics.substeps, read, setup=setup, drivers=drivers)
    return mjcf.sequence(spec, frames, surface.faces, flags, record)
