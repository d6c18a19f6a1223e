"""Simulate a mesh with a trained model and write the rollout: NPZ, an OBJ per frame, a video, the viewer.

Used by `neurok simulate`, by `neurok eval` for its rendered rollouts, and by the registered simulator
package's predict. Meshes come in their own units (metres, y-up); the simulation runs in the store's
normalisation (frame 0's bounding box to the unit cube), and the outputs are mapped back.

simulate_mesh is prepare_mesh (encode, reduce, fit the surrogate: the costly part, the mesh's alone) then
simulate_prepared (one rollout under its conditions), so a service can keep prepared meshes (neurok serve).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from neurok.data.schema import normalisation
from neurok.dynamics import (
    BoundaryConditions,
    DynamicsConfig,
    Forcing,
    PointForce,
    ReducedShape,
    Rollout,
    SimulatorConfig,
    active_subspace,
    checks,
    cubature,
    heavy_directions,
    modal,
    region_near,
    rollout,
    solve_initial_state,
    surrogate,
)
from neurok.dynamics.checks import Check
from neurok.dynamics.config import CubatureConfig
from neurok.dynamics.from_model import latent_shape
from neurok.dynamics.mechanics import metric
from neurok.dynamics.rigid import RIGID, FloatingShape
from neurok.dynamics.simulator import compiled_applies
from neurok.errors import BadInputError
from neurok.eval.config import ModelShapeConfig, RenderConfig
from neurok.eval.render import render_frames, write_video
from neurok.eval.viewer import write_viewer
from neurok.model import NeuROK

log = logging.getLogger(__name__)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_POKE = re.compile(
    rf"^\s*({_NUMBER}(?:,{_NUMBER}){{2}})\s*:\s*({_NUMBER}(?:,{_NUMBER}){{2}})\s*(?:@\s*({_NUMBER})\s*-\s*({_NUMBER}))?\s*$"
)


@dataclass
class Poke:
    """A force on the surface near `point` during [start, end); mesh units (m, N, s)."""

    point: tuple[float, float, float]
    force: tuple[float, float, float]
    start: float = 0.0
    end: float = 0.1


@dataclass
class MeshConditions:
    """What acts on a user's mesh, in its own units: pokes, gravity (m/s^2, y-up), an initial velocity
    and spin (rad/s about the centroid), pins (the surface near each point is held), a ground plane."""

    pokes: list[Poke] = field(default_factory=list)
    gravity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pins: list[tuple[float, float, float]] = field(default_factory=list)
    ground: float | None = None  # height (m) of a ground plane y = ground


def parse_vector(text: str, what: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise BadInputError(f"{what}: expected three finite numbers 'x,y,z', got {text!r}")
    return values  # type: ignore[return-value]


def parse_poke(text: str) -> Poke:
    """'x,y,z:fx,fy,fz@t0-t1' (the window defaults to 0-0.1 s)."""
    match = _POKE.match(text)
    if not match:
        raise BadInputError(f"--poke: expected 'x,y,z:fx,fy,fz@t0-t1', got {text!r}")
    point, force, start, end = match.groups()
    poke = Poke(parse_vector(point, "--poke point"), parse_vector(force, "--poke force"))
    if start is not None:
        poke.start, poke.end = float(start), float(end)
    if not poke.end > poke.start >= 0:
        raise BadInputError(f"--poke: the window must satisfy 0 <= t0 < t1, got {text!r}")
    return poke


def stiffness_for(shape: ReducedShape, frequency: float) -> float:
    """kappa that makes the mean mode of the metric at rest oscillate at `frequency` Hz:
    kappa = (2 pi f)^2 tr(G0) / k_q, since a mode of mass g and stiffness kappa has omega^2 = kappa / g."""
    with torch.no_grad():
        _, J = shape.jacobian_fn(shape.tensors)(shape.basis.new_zeros(shape.dims))
        G = metric(J, shape.latent.masses)
    return float((2 * np.pi * frequency) ** 2 * G.diagonal().mean())


@dataclass
class Body:
    """What the simulator integrates for one object, and how it was prepared."""

    full: ReducedShape | FloatingShape  # every vertex: the boundary solve and the output frames use it
    stepped: ReducedShape | FloatingShape  # what the steps evaluate: `full`, or a cubature of it
    points: torch.Tensor | None  # (n,) the vertices `stepped` has, None for all of them
    sim: SimulatorConfig  # with the stiffness set for the shape
    decoder: dict  # how it was prepared: which decoder the steps evaluate, its fit, the cubature's
    moments: modal.Prepared | None = None  # for the compiled loop (dynamics.compiled), once an object

    def run(self, q0: torch.Tensor, qdot0: torch.Tensor, sim: SimulatorConfig, forcing: Forcing) -> Rollout:
        """The rollout, stepped on the cubature when there is one, with every vertex at the frames."""
        if self.points is None:
            return rollout(self.full, q0, qdot0, sim, forcing, prepared=self.moments)
        return rollout(self.stepped, q0, qdot0, sim, forcing.on_vertices(self.points), output=self.full)


@dataclass
class PreparedBody:
    """An object's reduced space made ready to step, whatever then acts on it: its directions with inertia
    at rest (simulator.min_inertia) through its surrogate decoder (dynamics.surrogate), carried by a rigid
    frame unless shape.rigid is off, with the stiffness set for it. What a stepping path adds (the compiled
    loop's mass moments, a cubature's fit) is computed the first time a rollout takes that path, then kept:
    one rollout at a time per object."""

    reduced: ReducedShape  # the object's reduced space, every direction
    deformed: ReducedShape  # its heavy directions, through the surrogate where it fits
    rigid: bool  # `deformed` rides a rigid frame
    stiffness: float | None  # for the shape's mean mode (ModelShapeConfig.frequency); None keeps the config's
    decoder: dict  # how it was prepared: which decoder the steps evaluate and its fit
    cubature_cfg: CubatureConfig

    @cached_property
    def full(self) -> ReducedShape | FloatingShape:
        return self.carried(self.deformed)

    @cached_property
    def moments(self) -> modal.Prepared:
        return modal.prepare(self.full)

    @cached_property
    def cubature_fit(self) -> cubature.Cubature:
        return cubature.fit_cubature(self.deformed, self.cubature_cfg)

    def carried(self, shape: ReducedShape) -> ReducedShape | FloatingShape:
        return FloatingShape(shape) if self.rigid else shape

    def body(self, sim: SimulatorConfig, forcing: Forcing | None = None, ground: bool = False) -> Body:
        """What rollouts with settings `sim` step: one compiled loop over the mass moments; where that does
        not apply, a cubature (with `forcing`'s vertices) unless a ground plane needs every vertex."""
        if self.stiffness is not None:
            sim = dataclasses.replace(sim, stiffness=self.stiffness)
        full, cfg, vertices = self.full, self.cubature_cfg, self.reduced.latent.num_vertices
        if compiled_applies(full, sim):  # its steps sum every vertex's mass exactly, at no cost per vertex
            return Body(full, full, None, sim, self.decoder | {"path": "compiled"}, self.moments)
        record = self.decoder | {"path": "torch"}
        if record["decoder"] != "surrogate" or not cfg.enabled or ground or vertices <= cfg.max_points:
            return Body(full, full, None, sim, record)
        acted = torch.zeros(vertices, dtype=torch.bool) if forcing is None else forcing.acted_on()
        points, masses = self.cubature_fit.stepped(acted)
        stepped = self.carried(surrogate.on_vertices(self.deformed, points, masses))
        record |= {f"cubature_{k}": v for k, v in self.cubature_fit.as_dict().items()}
        return Body(full, stepped, points, sim, record)


def prepare_body(shape: ReducedShape, shape_cfg: ModelShapeConfig, dynamics: DynamicsConfig) -> PreparedBody:
    """The part of simulated_body that depends on the object alone: its heavy directions, their surrogate,
    the stiffness for them."""
    with torch.no_grad():
        heavy = heavy_directions(shape, dynamics.simulator.min_inertia, dynamics.simulator.min_motion)
    stiffness = None
    if shape_cfg.frequency > 0 and heavy.dims > 0:
        stiffness = stiffness_for(heavy, shape_cfg.frequency)
    if heavy.dims == 0:
        log.warning(
            "none of the %d reduced directions moves this mesh by dynamics.simulator.min_motion of its size "
            "per prior deviation: the object is rigid to this model",
            shape.dims,
        )
    deformed, record = surrogate.prepare(heavy, dynamics.surrogate)
    record["deformation_dims"] = heavy.dims
    return PreparedBody(shape, deformed, shape_cfg.rigid, stiffness, record, dynamics.cubature)


def simulated_body(
    shape: ReducedShape,
    shape_cfg: ModelShapeConfig,
    dynamics: DynamicsConfig,
    forcing: Forcing | None = None,
    ground: bool = False,
) -> Body:
    """What the simulator integrates for an object's reduced space: its directions with inertia at rest
    (simulator.min_inertia), through the object's surrogate decoder (dynamics.surrogate), carried by a
    rigid frame unless shape.rigid is off. That body steps as one compiled loop over its mass moments
    (dynamics.compiled); where that does not apply, on a cubature (dynamics.cubature) unless a ground
    plane needs every vertex, with `forcing`'s vertices stepped too."""
    return prepare_body(shape, shape_cfg, dynamics).body(dynamics.simulator, forcing, ground)


def reduced_model_shape(
    model: NeuROK,
    rest: np.ndarray,
    faces: np.ndarray | None,
    shape_cfg: ModelShapeConfig,
    dynamics: DynamicsConfig,
    seed: int = 0,
) -> ReducedShape:
    """The reduced shape space of a normalised rest mesh (reconstruction and IK; simulated_body for the
    simulator)."""
    latent = latent_shape(model, rest, faces, shape_cfg.points, shape_cfg.max_queries, seed=seed)
    return active_subspace(latent, dynamics.reduction)


@dataclass
class MeshRollout:
    """A rollout of one mesh, in its own units, with its energies (normalised units, total mass 1)."""

    time: np.ndarray  # (T,) s
    vertices: np.ndarray  # (T, V, 3) mesh units
    normalised: np.ndarray  # (T, V, 3)
    faces: np.ndarray  # (F, 3)
    center: np.ndarray  # (3,)
    scale: float
    kinetic: np.ndarray  # (T,)
    potential: np.ndarray  # (T,)
    work: np.ndarray  # (T,)
    q: np.ndarray  # (T, k): the rigid frame's 6 coordinates first when the shape floats, then k_q
    energy_drift: float
    velocities: np.ndarray  # (T, V, 3) normalised units per second
    decoder: dict = field(default_factory=dict)  # which decoder the steps evaluated (simulated_body)
    checks: list[Check] = field(default_factory=list)  # physics checks (dynamics.checks), when known
    absorbed: list[dict[str, float]] = field(default_factory=list)  # per poke: share the coordinates take

    @classmethod
    def from_rollout(cls, out: Rollout, faces: np.ndarray, center: np.ndarray, scale: float) -> MeshRollout:
        normalised = out.vertices[0].numpy()
        return cls(
            out.time.numpy(),
            normalised * scale + center,
            normalised,
            faces,
            center,
            scale,
            out.kinetic[0].numpy(),
            out.potential[0].numpy(),
            out.work[0].numpy(),
            out.q[0].numpy(),
            float(out.energy_drift()[0]),
            out.velocities[0].numpy(),
        )

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


@dataclass
class PreparedMesh:
    """A user's mesh made ready to simulate under one model and its settings: normalised, its shape space
    reduced and its body prepared. It depends on the mesh alone, not on a rollout's conditions or run
    settings (frames, dt, integrator, gravity), so it is prepared once and rolled out under any of them."""

    faces: np.ndarray  # (F, 3)
    center: np.ndarray  # (3,) the normalisation: normalised = (mesh - center) / scale
    scale: float
    rest: np.ndarray  # (V, 3) float32, normalised
    body: PreparedBody

    @property
    def reduced(self) -> ReducedShape:
        return self.body.reduced


def prepare_mesh(
    model: NeuROK,
    vertices: np.ndarray,
    faces: np.ndarray,
    shape_cfg: ModelShapeConfig,
    dynamics: DynamicsConfig,
    seed: int = 0,
) -> PreparedMesh:
    """Normalise the mesh, reduce the model's shape space for it and prepare its body (carried by a rigid
    frame unless shape.rigid is off): the costly part of simulate_mesh, and the same for every rollout."""
    center, scale = normalisation(vertices[None])
    rest = ((vertices - center) / scale).astype(np.float32)
    reduced = reduced_model_shape(model, rest, faces, shape_cfg, dynamics, seed)
    return PreparedMesh(np.asarray(faces), center, scale, rest, prepare_body(reduced, shape_cfg, dynamics))


def simulate_prepared(
    mesh: PreparedMesh,
    conditions: MeshConditions,
    dynamics: DynamicsConfig,
    poke_radius: float = 0.15,
) -> MeshRollout:
    """Roll a prepared mesh out under `conditions` with `dynamics`' run settings (those it was prepared
    with, or others for the simulator's frames, dt and integrator), and check the rollout's physics."""
    center, scale, rest, reduced = mesh.center, mesh.scale, mesh.rest, mesh.reduced
    ground = None if conditions.ground is None else (conditions.ground - center[1]) / scale
    dtype = reduced.basis.dtype
    rest_t = torch.from_numpy(rest).to(dtype)

    def near(point: Sequence[float]) -> torch.Tensor:
        return region_near(rest_t, [(p - c) / scale for p, c in zip(point, center, strict=True)], poke_radius)

    # the model's object has mass 1 (paper s9.2): a = F / 1, in normalised lengths
    point_forces = [
        PointForce(near(poke.point), [f / scale for f in poke.force], poke.start, poke.end)
        for poke in conditions.pokes
    ]
    pinned = torch.zeros(len(rest), dtype=dtype)
    for point in conditions.pins:
        pinned = torch.maximum(pinned, near(point))
    # with gravity or supports beside the pokes, an unpoked twin in the same batch shows what the pokes did
    twin = bool(point_forces) and (any(conditions.gravity) or bool(conditions.pins) or ground is not None)
    forcing = Forcing.stack(
        [
            Forcing.build(len(rest), forces, dtype=dtype, pin=pinned, pin_position=rest_t)
            for forces in ([point_forces, []] if twin else [point_forces])
        ]
    )
    body = mesh.body.body(dynamics.simulator, forcing, ground is not None)
    shape = body.full
    sim = dataclasses.replace(body.sim, gravity=[g / scale for g in conditions.gravity], ground=ground)
    masses = reduced.latent.masses
    centroid = (masses @ rest_t) / masses.sum()
    spin = rest_t.new_tensor(conditions.spin).expand(len(rest), 3)
    velocity = rest_t.new_tensor(conditions.velocity) / scale + torch.linalg.cross(spin, rest_t - centroid)
    bc = BoundaryConditions.stack([BoundaryConditions.velocity_field(velocity)] * forcing.force.shape[0])
    q0, qdot0 = solve_initial_state(shape, bc, dynamics.boundary)
    out = body.run(q0, qdot0, sim, forcing)
    result = MeshRollout.from_rollout(out, mesh.faces, center, scale)
    result.decoder = body.decoder
    scene = checked_scene(rest, masses, sim, forcing)
    unpoked = out.vertices[1].numpy() if twin else None
    result.checks = checks.physics_checks(
        scene, result.time, result.normalised, result.velocities, result.energy_drift, unpoked
    )
    result.absorbed = absorbed_shares(shape, q0[0], point_forces)
    return result


def simulate_mesh(
    model: NeuROK,
    vertices: np.ndarray,
    faces: np.ndarray,
    conditions: MeshConditions,
    shape_cfg: ModelShapeConfig,
    dynamics: DynamicsConfig,
    poke_radius: float = 0.15,
    seed: int = 0,
) -> MeshRollout:
    """Prepare the mesh (prepare_mesh) and roll it out under `conditions` (simulate_prepared)."""
    prepared = prepare_mesh(model, vertices, faces, shape_cfg, dynamics, seed)
    return simulate_prepared(prepared, conditions, dynamics, poke_radius)


def checked_scene(
    rest: np.ndarray, masses: torch.Tensor, sim: SimulatorConfig, forcing: Forcing
) -> checks.Scene:
    """What acted on the first rollout of a batch, as dynamics.checks reads it (the model's units)."""
    first = Forcing(*(t[0] for t in forcing))
    pokes = [
        checks.Poke(w.double().numpy(), f.double().numpy(), float(t0), float(t1))
        for w, f, t0, t1 in zip(first.weights, first.force, first.start, first.end, strict=True)
    ]
    return checks.Scene(
        np.asarray(rest, np.float64),
        masses.double().numpy(),
        np.asarray(sim.gravity, np.float64),
        pokes,
        first.pin.double().numpy(),
        sim.ground is not None,
    )


def absorbed_shares(
    shape: ReducedShape | FloatingShape, q0: torch.Tensor, forces: list[PointForce]
) -> list[dict]:
    """Per point force, the share of its work the coordinates take up at the start (checks.absorbed_share):
    all of them, the deformation's alone, and for scale what a rigid body takes (the region's mass share).
    A deformation share small beside the whole means the reduced space has no dent for this poke: it
    will move the object instead."""
    if not forces:
        return []
    with torch.no_grad():
        J = shape.jacobian_fn(shape.tensors)(q0)[1].double().numpy()
    masses = shape.latent.masses.double().numpy()
    deformation = slice(RIGID, None) if isinstance(shape, FloatingShape) else slice(None)
    shares = []
    for force in forces:
        region = force.region.double().numpy()
        field = region[:, None] * np.asarray(force.force, np.float64)
        shares.append(
            {
                "all": checks.absorbed_share(J, masses, field),
                "deformation": checks.absorbed_share(J, masses, field, deformation),
                "rigid_body": float(region @ masses / masses.sum() / region.max()),
            }
        )
    return shares


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def write_rollout(
    out_dir: str | Path,
    result: MeshRollout,
    render: RenderConfig,
    truth: np.ndarray | None = None,
    title: str = "NeuROK rollout",
) -> dict[str, Path]:
    """rollout.npz, frames/frame_NNNN.obj, rollout.mp4|gif, viewer.html under out_dir; `truth` (T, V, 3)
    in mesh units, when given, is stored and shown beside the prediction."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {"npz": out / "rollout.npz"}
    report = ("energy_drift", "decoder", "checks", "absorbed")
    arrays = {f.name: getattr(result, f.name) for f in dataclasses.fields(result) if f.name not in report}
    if truth is not None:
        arrays["truth"] = truth
    np.savez_compressed(files["npz"], energy_drift=result.energy_drift, **arrays)
    if result.checks:
        files["checks"] = out / "checks.json"
        checks_report = {
            "checks": [dataclasses.asdict(c) | {"passed": c.passed} for c in result.checks],
            "absorbed": result.absorbed,
            "decoder": result.decoder,
        }
        files["checks"].write_text(json.dumps(checks_report, indent=2))
    if render.obj:
        frames_dir = out / "frames"
        frames_dir.mkdir(exist_ok=True)
        for t, vertices in enumerate(result.vertices):
            write_obj(frames_dir / f"frame_{t:04d}.obj", vertices, result.faces)
        files["obj"] = frames_dir
    panels = (
        {"prediction": result.vertices} if truth is None else {"truth": truth, "prediction": result.vertices}
    )
    fps = 1.0 / float(result.time[1] - result.time[0]) if len(result.time) > 1 else 30.0
    if render.video != "none":
        if render.video not in ("mp4", "gif"):
            raise BadInputError(f"render.video must be mp4, gif or none, got {render.video!r}")
        frames = render_frames(panels, result.faces, render.size)
        files["video"] = write_video(frames, out / f"rollout.{render.video}", fps)
    if render.viewer:
        files["viewer"] = write_viewer(out / "viewer.html", panels, result.faces, fps, title)
    return files


def conditions_from_cli(
    pokes: Sequence[str],
    gravity: str | None,
    velocity: str | None,
    spin: str | None = None,
    pins: Sequence[str] = (),
    ground: float | None = None,
) -> MeshConditions:
    zero = (0.0, 0.0, 0.0)
    return MeshConditions(
        [parse_poke(p) for p in pokes],
        parse_vector(gravity, "--gravity") if gravity else zero,
        parse_vector(velocity, "--velocity") if velocity else zero,
        parse_vector(spin, "--spin") if spin else zero,
        [parse_vector(p, "--pin") for p in pins],
        ground,
    )
