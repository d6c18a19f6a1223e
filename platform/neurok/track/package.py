"""The simulator package: the MLflow pyfunc every consumer loads (`models:/neurok@champion`).

Not the default `pt2` export, which freezes input shapes to the example's vertex count (traps.md 8).
Artifacts: the model (its config and weights, as a slim checkpoint), the resolved training config, the
simulation settings (normalisation and queries, per-object reduction, integrator defaults, poke radius),
the dataset's identity and normalisation, and the evaluation report. The code is the installed `neurok`
package, referenced by import; predict runs `neurok simulate`'s own simulate_mesh.

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
from neurok.dynamics.config import Integrator
from neurok.errors import BadInputError
from neurok.eval.config import SimulateConfig
from neurok.eval.meshes import check_mesh
from neurok.eval.rollout_files import MeshConditions, Poke, simulate_mesh
from neurok.model.checkpoint import load_model, slim_checkpoint

ARTIFACT_NAME = "simulator"
ROW = 8  # numbers per poke or drag row


def drag_as_pokes(vertices: np.ndarray, row: np.ndarray, radius: float) -> list[Poke]:
    """A drag as a push-then-brake pair of forces that moves its region by the offset over [t0, t1):
    the region's mass share times 4 d / T^2 (the model's object has a mass of 1 kg, paper s9.2)."""
    x, y, z, dx, dy, dz, t0, t1 = (float(v) for v in row)
    if not t1 > t0 >= 0:
        raise BadInputError(f"drags: the window must satisfy 0 <= t0 < t1, got {t0}, {t1}")
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


def _rows(params: dict, name: str) -> np.ndarray:
    value = np.asarray(params.get(name) or [], np.float64)
    if value.size % ROW:
        raise BadInputError(f"params.{name}: rows of {ROW} numbers expected, got {value.size} numbers")
    return value.reshape(-1, ROW)


def _vector(params: dict, name: str) -> tuple[float, float, float]:
    value = np.asarray(params.get(name) or [0.0, 0.0, 0.0], np.float64).reshape(-1)
    if value.shape != (3,):
        raise BadInputError(f"params.{name}: expected 3 numbers (x, y, z), got {value.size}")
    return tuple(value.tolist())


class SimulatorPackage(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model = load_model(context.artifacts["model"])
        self.cfg = load_config(SimulateConfig, context.artifacts["simulate"])

    def predict(self, context, model_input, params=None):
        params, cfg = params or {}, self.cfg
        vertices = np.asarray(model_input["vertices"], np.float64)
        faces = np.asarray(model_input["faces"], np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
            raise BadInputError(f"vertices and faces: (V, 3) and (F, 3), got {vertices.shape}, {faces.shape}")
        check_mesh(vertices, faces, "model_input", cfg.max_vertices)
        pokes = [Poke(tuple(r[:3]), tuple(r[3:6]), r[6], r[7]) for r in _rows(params, "pokes").tolist()]
        for row in _rows(params, "drags"):
            pokes += drag_as_pokes(vertices, row, cfg.poke_radius)
        conditions = MeshConditions(pokes, _vector(params, "gravity"), _vector(params, "initial_velocity"))
        sim = cfg.dynamics.simulator
        sim = dataclasses.replace(
            sim,
            frames=int(params.get("frames") or sim.frames),
            dt=float(params.get("dt") or sim.dt),
            integrator=Integrator(params.get("integrator") or sim.integrator),
        )
        dynamics = dataclasses.replace(cfg.dynamics, simulator=sim)
        torch.manual_seed(cfg.seed)
        out = simulate_mesh(
            self.model, vertices, faces, conditions, cfg.shape, dynamics, cfg.poke_radius, cfg.seed
        )
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
