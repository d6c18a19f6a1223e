"""The simulation service: one simulator package loaded as consumers load it (mlflow.pyfunc), its
identity, the request limits, and the cache of prepared meshes. No HTTP here (server.py)."""

from __future__ import annotations

import tempfile
import threading
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from neurok import __version__
from neurok.errors import BadInputError
from neurok.eval.rollout_files import PreparedMesh
from neurok.serve.cache import PreparedCache, mesh_key
from neurok.serve.limits import Limits
from neurok.track.package import Request, SimulatorPackage
from neurok.track.registry import resolve

REGISTERED = "models:/"


class SimulationService:
    """simulate() is what POST /simulate runs: read and check the request (the package's own checks and
    the limits), take the mesh's prepared object from the cache (preparing it on a miss), roll out."""

    def __init__(
        self, package: SimulatorPackage, identity: dict[str, Any], limits: Limits, cache_size: int = 4
    ):
        self.package = package
        self.identity = identity
        self.limits = limits
        self.cache: PreparedCache[PreparedMesh] = PreparedCache(cache_size)
        # one simulation at a time: torch's thread count is set for one process-wide (neurok.threads)
        self._simulating = threading.Lock()

    def simulate(self, model_input: dict, params: dict) -> dict[str, np.ndarray]:
        """The package's predict output for this input and params; a BadInputError names the field."""
        request = self.package.read(model_input, params)
        self.check_limits(request)
        key = mesh_key(request.vertices, request.faces)
        with self._simulating:
            prepared = self.cache.get_or_prepare(
                key, lambda: self.package.prepare(request.vertices, request.faces)
            )
            return self.package.roll_out(prepared, request)

    def check_limits(self, request: Request) -> None:
        """At most max_vertices vertices and max_frames frames, and at most as many integrator steps as
        max_frames frames take at the package's own dt (a tiny dt would ask for any number of steps)."""
        limits, sim = self.limits, request.dynamics.simulator
        if len(request.vertices) > limits.max_vertices:
            raise BadInputError(
                f"vertices: {len(request.vertices)} is more than this service's max_vertices="
                f"{limits.max_vertices}; decimate the mesh",
                "vertices",
            )
        if sim.frames > limits.max_frames:
            raise BadInputError(
                f"frames: {sim.frames} is more than this service's max_frames={limits.max_frames}", "frames"
            )
        steps = sim.frames * sim.steps_per_frame()
        budget = limits.max_frames * self.package.cfg.dynamics.simulator.steps_per_frame()
        if steps > budget:
            raise BadInputError(
                f"dt: {sim.frames} frames at dt={sim.dt:g} s are {steps} steps, more than this service's "
                f"{budget} (max_frames={limits.max_frames} at the package's dt); raise dt",
                "dt",
            )


def load_service(uri: str, limits: Limits, cache_size: int = 4) -> SimulationService:
    """The simulator package at `uri` (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ or a model
    folder; from mlflow's tracking store) behind a service. An alias is resolved to its version first and
    that version is loaded, so /version names what is served even when the alias moves on."""
    identity: dict[str, Any] = {}
    if uri.startswith(REGISTERED):
        version = resolve(MlflowClient(), uri.removeprefix(REGISTERED))
        identity = {"registered_name": version.name, "registered_version": str(version.version)}
        uri = f"{REGISTERED}{version.name}/{version.version}"
    # the package's load_context reads its artifacts into memory, so the download is not kept
    with tempfile.TemporaryDirectory(prefix="neurok-serve-") as tmp:
        try:
            loaded = mlflow.pyfunc.load_model(uri, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise BadInputError(f"--model {uri}: could not load it ({exc})") from None
    try:
        package = loaded.unwrap_python_model()
    except ValueError:  # a flavor other than a PythonModel
        package = None
    if not isinstance(package, SimulatorPackage):
        raise BadInputError(f"--model {uri}: not a NeuROK simulator package")
    meta = loaded.metadata
    identity |= {
        "run_id": meta.run_id,
        "model_id": meta.model_id,
        "dataset_content_hash": (meta.metadata or {}).get("dataset_content_hash"),
    }
    return SimulationService(
        package, {"neurok": __version__, "model_uri": uri, **identity}, limits, cache_size
    )
