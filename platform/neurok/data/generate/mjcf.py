"""What every scene shares: MJCF text, the z-up/y-up conversion, the drivers (pushes, drags, initial
velocities) and the recording loop that steps MuJoCo and checks that what it recorded is finite and moves.

Scenes are built in MuJoCo's frame (z up); `record` hands back y-up vertices, as the store wants them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mujoco
import numpy as np

from neurok.data.generate.conditions import Conditions, Drag
from neurok.data.generate.recipe import SequenceSpec
from neurok.data.schema import Sequence as MeshSequence
from neurok.errors import NeurokError

log = logging.getLogger(__name__)

# y-up coordinates of a z-up point: (x, y, z) -> (x, z, -y), a rotation (right-handed to right-handed).
Y_UP_FROM_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# Warnings that mean MuJoCo gave up on the state (it resets it and carries on, which would be garbage).
FATAL_WARNINGS = (
    mujoco.mjtWarning.mjWARN_INERTIA,
    mujoco.mjtWarning.mjWARN_CONTACTFULL,
    mujoco.mjtWarning.mjWARN_CNSTRFULL,
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


class UnstableError(NeurokError):
    """MuJoCo diverged: the same scene with shorter time steps may not."""


Driver = Callable[[mujoco.MjModel, mujoco.MjData, int], None]  # called before every physics step


def to_y_up(x: np.ndarray) -> np.ndarray:
    return np.asarray(x) @ Y_UP_FROM_Z_UP.T


def to_z_up(x: np.ndarray) -> np.ndarray:
    return np.asarray(x) @ Y_UP_FROM_Z_UP


def numbers(values) -> str:
    """MJCF text for a list of numbers."""
    return " ".join(f"{v:.9g}" for v in np.asarray(values, float).ravel())


def ints(values) -> str:
    return " ".join(str(int(v)) for v in np.asarray(values).ravel())


def scene_xml(
    name: str,
    *,
    timestep: float,
    gravity_y_up: np.ndarray,
    friction: float,
    worldbody: str,
    integrator: str = "discrete",
    solver: str = "CG",
    iterations: int = 30,
    extra: str = "",
) -> str:
    """A whole model: solver options, a ground plane at z = 0, the scene's bodies and its extra sections."""
    return f"""
<mujoco model="{name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep:.9g}" integrator="{integrator}" solver="{solver}" iterations="{iterations}"
          tolerance="1e-6" gravity="{numbers(to_z_up(gravity_y_up))}"/>
  <worldbody>
    <geom name="ground" type="plane" size="0 0 1" friction="{friction:.9g} 0.005 0.0001"/>
    {worldbody}
  </worldbody>
  {extra}
</mujoco>"""


def compile_model(xml: str, sequence: str) -> mujoco.MjModel:
    try:
        return mujoco.MjModel.from_xml_string(xml)
    except ValueError as exc:
        raise NeurokError(f"sequence '{sequence}': MuJoCo rejected the scene: {exc}") from exc


def flex_scene(
    name: str, c: Conditions, worldbody: str, held: list[str] | None
) -> tuple[mujoco.MjModel, list[Driver]]:
    """Compile a flex scene (cloth, elastic solids): its `worldbody` XML and, when the conditions drag, a
    grab of the `held` bodies at their origins (flex vertices and nodes are point bodies).

    Returns the model and its drivers (the drag's, if any)."""
    extra, grab = "", None
    if held is not None:
        grab = Grab(held, np.zeros((len(held), 3)), c.drag)
        worldbody += grab.worldbody_xml()
        extra = f"<equality>{grab.equality_xml()}</equality>"
    xml = scene_xml(
        name,
        timestep=c.physics_dt,
        gravity_y_up=c.gravity,
        friction=c.friction,
        worldbody=worldbody,
        extra=extra,
    )
    model = compile_model(xml, name)
    return model, [grab.driver(model, c.physics_dt)] if grab else []


def smoothstep(s: float) -> float:
    s = min(max(s, 0.0), 1.0)
    return s * s * (3 - 2 * s)


@dataclass
class Grab:
    """A drag: points of some bodies held by mocap bodies (connect constraints) and carried along a path.

    Inactive until `drag.start`; then each mocap body takes up its point where it is, so nothing jumps,
    and moves by `drag.offset` (eased) until `drag.end`, where it stays.
    """

    bodies: list[str]
    anchors: np.ndarray  # (n, 3) the held points, in their bodies' frames
    drag: Drag

    def worldbody_xml(self) -> str:
        return "".join(f'<body name="grab{i}" mocap="true"/>' for i in range(len(self.bodies)))

    def equality_xml(self) -> str:
        return "".join(
            f'<connect name="grab{i}" body1="{b}" body2="grab{i}" anchor="{numbers(a)}" active="false"/>'
            for i, (b, a) in enumerate(zip(self.bodies, self.anchors, strict=True))
        )

    def driver(self, model: mujoco.MjModel, timestep: float) -> Driver:
        body_ids = np.array([model.body(b).id for b in self.bodies])
        grabs = [model.body(f"grab{i}").id for i in range(len(self.bodies))]
        mocap_ids = model.body_mocapid[grabs]
        eq_ids = np.array([model.equality(f"grab{i}").id for i in range(len(self.bodies))])
        # MuJoCo fixes each constraint's point on the mocap body from the pose at qpos0: where the held
        # point was relative to the (unmoved) mocap body then.
        rest = mujoco.MjData(model)
        mujoco.mj_kinematics(model, rest)
        lag = self.points(rest, body_ids) - model.body_pos[grabs]
        offset = to_z_up(self.drag.offset)
        first_step = int(round(self.drag.start / timestep))
        length = max(self.drag.end - self.drag.start, timestep)
        held: dict[str, np.ndarray] = {}

        def drive(m: mujoco.MjModel, d: mujoco.MjData, step: int) -> None:
            if step < first_step:
                return
            if not held:
                held["from"] = self.points(d, body_ids) - lag
                d.eq_active[eq_ids] = 1
            eased = smoothstep((step * timestep - self.drag.start) / length)
            d.mocap_pos[mocap_ids] = held["from"] + eased * offset

        return drive

    def points(self, d: mujoco.MjData, body_ids: np.ndarray) -> np.ndarray:
        return d.xpos[body_ids] + np.einsum("nij,nj->ni", d.xmat[body_ids].reshape(-1, 3, 3), self.anchors)


@dataclass
class Push:
    """A poke: forces on bodies' centres of mass over a short window, adding up to given impulses (z-up)."""

    body_ids: np.ndarray  # (n,)
    forces: np.ndarray  # (n, 3) N
    first_step: int
    steps: int

    @classmethod
    def impulse(cls, body_ids, impulses, time: float, timestep: float, window: float) -> Push:
        steps = max(1, int(round(window / timestep)))
        forces = np.asarray(impulses, float) / (steps * timestep)
        return cls(np.asarray(body_ids), forces, int(round(time / timestep)), steps)

    def drive(self, m: mujoco.MjModel, d: mujoco.MjData, step: int) -> None:
        if step == self.first_step:
            d.xfrc_applied[self.body_ids, :3] = self.forces
        elif step == self.first_step + self.steps:
            d.xfrc_applied[self.body_ids, :3] = 0


def set_point_velocities(model, data, bodies: np.ndarray, points: np.ndarray, velocity, spin, centre) -> None:
    """Give point-mass bodies (flex vertices or nodes: three world-axis slide joints each) the rigid
    velocity field velocity + spin x (point - centre), all z-up."""
    dofs = model.body_dofadr[bodies][:, None] + np.arange(3)
    data.qvel[dofs] = velocity + np.cross(spin, points - centre)


def record(
    model: mujoco.MjModel,
    sequence: str,
    frames: int,
    substeps: int,
    read: Callable[[mujoco.MjModel, mujoco.MjData], np.ndarray],
    *,
    setup: Callable[[mujoco.MjModel, mujoco.MjData], None] | None = None,
    drivers: Sequence[Driver] = (),
) -> np.ndarray:
    """Step the model and return (frames, V, 3) float32 y-up vertices; frame 0 is the initial state.

    Raises NeurokError naming the sequence if MuJoCo goes unstable or nothing moves.
    """
    messages: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)  # keep MuJoCo's warnings off stderr; they are raised below
    try:
        data = mujoco.MjData(model)
        if setup is not None:
            setup(model, data)
        mujoco.mj_forward(model, data)
        first = read(model, data)
        out = np.empty((frames, *first.shape))
        out[0] = first
        extent = float(np.ptp(first, axis=0).max())
        step = 0
        for f in range(1, frames):
            for _ in range(substeps):
                for drive in drivers:
                    drive(model, data, step)
                mujoco.mj_step(model, data)
                step += 1
            out[f] = read(model, data)
            fatal = [mujoco.mjtWarning(w).name for w in FATAL_WARNINGS if data.warning[w].number > 0]
            if fatal or not np.isfinite(out[f]).all() or np.abs(out[f] - first).max() > 100 * extent:
                detail = "; ".join(messages) or ", ".join(fatal) or "positions diverged"
                raise UnstableError(
                    f"sequence '{sequence}': MuJoCo went unstable at frame {f} ({detail}); "
                    "try more physics.substeps or narrower physics ranges"
                )
    finally:
        mujoco.set_mju_user_warning(previous)
    for message in messages:
        log.debug("sequence %s: MuJoCo: %s", sequence, message)
    moved = float(np.linalg.norm(out - first, axis=-1).max())
    if moved < 1e-3 * extent:
        raise NeurokError(f"sequence '{sequence}': nothing moved (max displacement {moved:.2e} m)")
    return to_y_up(out).astype(np.float32)


def sequence(
    spec: SequenceSpec, frames: np.ndarray, faces: np.ndarray, flags: np.ndarray, conditions: dict
) -> MeshSequence:
    """The recorded sequence, named and labelled by its spec."""
    return MeshSequence(
        name=spec.name,
        frames=frames,
        faces=faces,
        object_type=spec.object_type,
        category=spec.category,
        object_id=spec.object_id,
        split=spec.split,
        vertex_flags=flags,
        conditions=conditions,
    )
