"""The simulator package: the MLflow pyfunc every consumer loads (`models:/neurok@champion`).

Not the default `pt2` export, which freezes input shapes to the example's vertex count (traps.md 8).
Artifacts: the model (its config and weights, as a slim checkpoint), the resolved training config, the
simulation settings (normalisation and queries, per-object reduction, integrator defaults, poke radius),
the dataset's identity and normalisation, and the evaluation report. The code is the installed `neurok`
package, referenced by import; predict runs `neurok simulate`'s own simulate_mesh, in its two steps
(prepare_mesh, simulate_prepared) so that `neurok serve` can keep the first per mesh.

This module sits at the top of the data flow (it uses eval), so nothing below eval imports it.

    predict({"vertices": (V, 3), "faces": (F, 3)},
            params={"gravity": [gx, gy, gz], "initial_velocity": [vx, vy, vz],
                    "pokes": [x y z  fx fy fz  t0 t1, ...]    a force (N) near a point (m) during [t0, t1) s
                    "drags": [x y z  dx dy dz  t0 t1, ...]    the region near a point moved by (dx, dy, dz) m
                    "frames": 60, "dt": 1/240, "integrator": "variational" | "rk4"})
      -> {"vertices": (frames + 1, V, 3), "time", "kinetic", "potential": (frames + 1,), "energy_drift": (1,)}

Pokes and drags are flattened rows of 8; the conditions default to none. They are params, not inputs,
because they are optional: MLflow 3.17 requires every tensor input of a signature (a TensorSpec has no
`required`) and drops inputs the signature does not name, while params carry defaults.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

from neurok import __version__
from neurok.config import load_config, to_yaml
from neurok.data.schema import normalisation
from neurok.dynamics import region_near
from neurok.dynamics.config import DynamicsConfig, Integrator, SimulatorConfig
from neurok.errors import BadInputError
from neurok.eval.config import SimulateConfig
from neurok.eval.meshes import check_mesh
from neurok.eval.rollout_files import MeshConditions, Poke, PreparedMesh, prepare_mesh, simulate_prepared
from neurok.model.checkpoint import load_model, slim_checkpoint

ARTIFACT_NAME = "simulator"
ROW = 8  # numbers per poke or drag row


def drag_as_pokes(vertices: np.ndarray, row: np.ndarray, radius: float) -> list[Poke]:
    """A drag as a push-then-brake pair of forces that moves its region by the offset over [t0, t1):
    the region's mass share times 4 d / T^2 (the model's object has a mass of 1 kg, paper s9.2)."""
    x, y, z, dx, dy, dz, t0, t1 = (float(v) for v in row)
    if not t1 > t0 >= 0:
        raise BadInputError(f"drags: the window must satisfy 0 <= t0 < t1, got {t0}, {t1}", "drags")
    center, scale = normalisation(vertices[None])
    rest = torch.from_numpy(((vertices - center) / scale).astype(np.float32))
    share = float(
        region_near(
            rest, [(x - center[0]) / scale, (y - center[1]) / scale, (z - center[2]) / scale], radius
        ).mean()
    )
    push = tuple(4 * share * d / (t1 - t0) ** 2 for d in (dx, dy, dz))
    mid = (t0 + t1) / 2
    return [Poke((x, y, z), push, t0, mid), Poke((x, y, z), tuple(-f for f in push), mid, t1)]


def numbers(value, where: str, field: str, finite: bool = True) -> np.ndarray:
    """`value` as a float64 array of numbers (not strings, booleans or ragged lists), finite unless not
    asked to be."""
    try:
        array = np.asarray(value)
    except ValueError:  # numpy refuses ragged nested lists
        array = np.asarray(None)
    if array.dtype.kind not in "iuf":
        raise BadInputError(f"{where}: an array of numbers expected, got {repr(value)[:80]}", field)
    if finite and not np.isfinite(array).all():
        raise BadInputError(f"{where}: NaN or Inf at {np.argwhere(~np.isfinite(array))[0].tolist()}", field)
    return array.astype(np.float64)


def _mesh(model_input) -> tuple[np.ndarray, np.ndarray]:
    # check_mesh names a vertex that is NaN or Inf
    vertices = numbers(model_input["vertices"], "model_input.vertices", "vertices", finite=False)
    faces = numbers(model_input["faces"], "model_input.faces", "faces")
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise BadInputError(f"model_input.vertices: (V, 3) expected, got {vertices.shape}", "vertices")
    if faces.ndim != 2 or faces.shape[1] != 3 or (faces != np.round(faces)).any():
        raise BadInputError(f"model_input.faces: (F, 3) vertex indices expected, got {faces.shape}", "faces")
    return vertices, faces.astype(np.int64)


def _rows(params: dict, name: str) -> np.ndarray:
    """Rows of 8, flattened (as the signature's params carry them) or nested."""
    value = numbers(params.get(name) or [], f"params.{name}", name)
    if value.ndim > 2 or (value.ndim == 2 and value.shape[1] != ROW):
        raise BadInputError(f"params.{name}: rows of {ROW} numbers expected, got shape {value.shape}", name)
    value = value.reshape(-1)
    if value.size % ROW:
        raise BadInputError(f"params.{name}: rows of {ROW} numbers expected, got {value.size} numbers", name)
    return value.reshape(-1, ROW)


def _vector(params: dict, name: str) -> tuple[float, float, float]:
    value = numbers(params.get(name) or [0.0, 0.0, 0.0], f"params.{name}", name).reshape(-1)
    if value.shape != (3,):
        raise BadInputError(f"params.{name}: expected 3 numbers (x, y, z), got {value.size}", name)
    return tuple(value.tolist())


def _run_settings(params: dict, sim: SimulatorConfig) -> SimulatorConfig:
    """The simulator's settings with a call's frames, dt and integrator (each defaults to the package's)."""
    frames, dt, integrator = (params.get(k) for k in ("frames", "dt", "integrator"))
    if frames is not None:
        frames = numbers(frames, "params.frames", "frames")
        if frames.shape != () or frames < 1 or frames != round(float(frames)):
            raise BadInputError(
                f"params.frames: a whole number >= 1 expected, got {params['frames']}", "frames"
            )
    if dt is not None:
        dt = numbers(dt, "params.dt", "dt")
        if dt.shape != () or dt <= 0:
            raise BadInputError(f"params.dt: a time step > 0 s expected, got {params['dt']}", "dt")
    if integrator is not None and integrator not in list(Integrator):  # a list: it may be unhashable
        known = ", ".join(Integrator)
        raise BadInputError(f"params.integrator: one of {known} expected, got {integrator!r}", "integrator")
    sim = dataclasses.replace(
        sim,
        frames=sim.frames if frames is None else int(frames),
        dt=sim.dt if dt is None else float(dt),
        integrator=Integrator(integrator or sim.integrator),
    )
    try:
        sim.steps_per_frame()
    except BadInputError as exc:
        raise BadInputError(f"params.dt: {exc}", "dt") from None
    return sim


@dataclass
class Request:
    """A predict call's input, read and checked: the mesh, what acts on it, the rollout's settings."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    conditions: MeshConditions
    dynamics: DynamicsConfig


class SimulatorPackage(mlflow.pyfunc.PythonModel):
    """predict = read (check the call) + prepare (the mesh's costly part) + roll_out (one rollout); a
    service keeps prepared meshes and runs the last step alone (neurok.serve)."""

    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts["model"])
        self.cfg = load_config(SimulateConfig, context.artifacts["simulate"])

    def predict(self, context, model_input, params=None):
        request = self.read(model_input, params or {})
        return self.roll_out(self.prepare(request.vertices, request.faces), request)

    def read(self, model_input, params: dict) -> Request:
        """The call's mesh, conditions and settings, checked: a BadInputError names the field at fault."""
        cfg = self.cfg
        vertices, faces = _mesh(model_input)
        check_mesh(vertices, faces, "model_input", cfg.max_vertices)
        pokes = [Poke(tuple(r[:3]), tuple(r[3:6]), r[6], r[7]) for r in _rows(params, "pokes").tolist()]
        for row in _rows(params, "drags"):
            pokes += drag_as_pokes(vertices, row, cfg.poke_radius)
        conditions = MeshConditions(pokes, _vector(params, "gravity"), _vector(params, "initial_velocity"))
        sim = _run_settings(params, cfg.dynamics.simulator)
        return Request(vertices, faces, conditions, dataclasses.replace(cfg.dynamics, simulator=sim))

    def prepare(self, vertices: np.ndarray, faces: np.ndarray) -> PreparedMesh:
        """The mesh made ready to roll out under any conditions (rollout_files.prepare_mesh)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        return prepare_mesh(self.model, vertices, faces, cfg.shape, cfg.dynamics, cfg.seed)

    def roll_out(self, prepared: PreparedMesh, request: Request) -> dict[str, np.ndarray]:
        torch.manual_seed(self.cfg.seed)
        out = simulate_prepared(prepared, request.conditions, request.dynamics, self.cfg.poke_radius)
        return {
            "vertices": out.vertices,
            "time": out.time,
            "kinetic": out.kinetic,
            "potential": out.potential,
            "energy_drift": np.array([out.energy_drift]),
        }


def example_input() -> tuple[dict[str, np.ndarray], dict]:
    """A tetrahedron poked at one corner for two frames: the signature's and the docs' example."""
    mesh = {
        "vertices": np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float64) * 0.2,
        "faces": np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64),
    }
    return mesh, {"frames": 2, "pokes": [0.2, 0.0, 0.0, 0.0, 0.01, 0.0, 0.0, 0.05]}


def signature(cfg: SimulateConfig) -> ModelSignature:
    """The mesh as tensor inputs with free vertex and face counts; the conditions and the rollout's settings
    as params with defaults (the conditions none: pokes and drags flattened rows of 8)."""
    vector = (-1,)
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.float64), (-1, 3), "vertices"),
            TensorSpec(np.dtype(np.int64), (-1, 3), "faces"),
        ]
    )
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.float64), (-1, -1, 3), "vertices"),
            *(TensorSpec(np.dtype(np.float32), vector, k) for k in ("time", "kinetic", "potential")),
            TensorSpec(np.dtype(np.float64), vector, "energy_drift"),
        ]
    )
    sim = cfg.dynamics.simulator
    params = ParamSchema(
        [
            ParamSpec("frames", "long", sim.frames),
            ParamSpec("dt", "double", sim.dt),
            ParamSpec("integrator", "string", str(sim.integrator)),
            ParamSpec("gravity", "double", [0.0, 0.0, 0.0], vector),
            ParamSpec("initial_velocity", "double", [0.0, 0.0, 0.0], vector),
            ParamSpec("pokes", "double", [], vector),
            ParamSpec("drags", "double", [], vector),
        ]
    )
    return ModelSignature(inputs, outputs, params)


def requirements() -> list[str]:
    """What a fresh environment needs: the neurok package (not on PyPI: install it from this repository)."""
    return [
        f"neurok=={__version__}",
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
    ]


def log_package(
    checkpoint: dict,
    train_config_yaml: str,
    dataset: dict,
    report: dict,
    cfg: SimulateConfig,
    registered_name: str | None = None,
):
    """Log the package to the active MLflow run (and register it under `registered_name`); returns
    mlflow's ModelInfo. `dataset`: the training store's identity (path, content hash) and normalisation."""
    with tempfile.TemporaryDirectory(prefix="neurok-package-") as tmp:
        tmp = Path(tmp)
        torch.save(slim_checkpoint(checkpoint), tmp / "model.ckpt")
        (tmp / "simulate.yaml").write_text(to_yaml(cfg))
        (tmp / "config.yaml").write_text(train_config_yaml)
        (tmp / "dataset.json").write_text(json.dumps(dataset, indent=2))
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float))
        files = ("model.ckpt", "simulate.yaml", "config.yaml", "dataset.json", "report.json")
        return mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=SimulatorPackage(),
            artifacts={Path(f).stem: str(tmp / f) for f in files},
            signature=signature(cfg),
            input_example=example_input(),
            registered_model_name=registered_name,
            pip_requirements=requirements(),  # given, so MLflow skips a slow subprocess that infers them
            metadata={"dataset_content_hash": dataset.get("content_hash", "")},
        )
