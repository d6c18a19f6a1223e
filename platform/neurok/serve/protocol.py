"""What travels over HTTP: a POST /simulate request read into the package's model_input and params, and
a rollout written back.

    POST /simulate   Content-Type: application/json
      {"vertices": [[x, y, z], ...], "faces": [[i, j, k], ...],   required
       "gravity": [gx, gy, gz], "initial_velocity": [vx, vy, vz],   m/s^2, m/s
       "pokes": [[x, y, z, fx, fy, fz, t0, t1], ...],               a force (N) near a point in [t0, t1) s
       "drags": [[x, y, z, dx, dy, dz, t0, t1], ...],               a region moved by (dx, dy, dz) m
       "frames": 60, "dt": 0.0041666, "integrator": "variational" | "rk4"}
    POST /simulate?gravity=0,-9.81,0&pokes=0.3,0,0,-0.02,0,0,0,0.05&frames=30   (pokes, drags: repeatable)
      Content-Type: model/obj or text/plain (OBJ), application/ply or application/octet-stream (PLY),
      model/gltf-binary (GLB); the body is the file, the conditions are the query's

The answer: {"vertices": (frames + 1, V, 3), "time", "kinetic", "potential": (frames + 1,),
"energy_drift": (1,)} as JSON (a number that is not finite as null) or, with `Accept:
application/octet-stream` or `?format=npz`, an NPZ of the same arrays; or, with `Accept:
application/x-neurok-frames` or `?format=frames` (what the playground reads as it arrives), binary: a
little-endian uint32 n, n bytes of a JSON header {"frames": frames + 1, "vertices": V, "time",
"kinetic", "potential", "energy_drift"} (spaces pad it to a multiple of 4 bytes), then each frame's
vertices as V x 3 little-endian float32, written one frame at a time.

Refusals, each with a JSON body {"error": message, "field": the field at fault}: 400 a body or query
that cannot be read (not JSON, a field missing or unknown, a query value that is not a number), 411 no
Content-Length, 413 a body over the limit, 415 another Content-Type, 422 a value the simulation refuses
(the package's checks of the mesh and conditions, the service's limits).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import numpy as np

from neurok.eval.meshes import read_mesh

MESH = ("vertices", "faces")
CONDITIONS = ("gravity", "initial_velocity", "pokes", "drags", "frames", "dt", "integrator")
ROWS = ("pokes", "drags")  # repeatable in a query: one row each
JSON_TYPE = "application/json"
NPZ_TYPE = "application/octet-stream"
FRAMES_TYPE = "application/x-neurok-frames"
ANSWER_TYPES = {"json": JSON_TYPE, "npz": NPZ_TYPE, "frames": FRAMES_TYPE}
MESH_TYPES = {
    "model/obj": "obj",
    "text/plain": "obj",
    "application/ply": "ply",
    "application/octet-stream": "ply",
    "model/gltf-binary": "glb",
}


class RequestError(Exception):
    """A request refused before the package reads it: its HTTP status and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None):
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass
class Call:
    """One POST /simulate, read: what the package's predict takes, and how to answer."""

    model_input: dict
    params: dict
    answer: str  # a key of ANSWER_TYPES


def read_call(content_type: str, body: bytes, query: str, accept: str, max_vertices: int) -> Call:
    """The call a request makes; `content_type` without its parameters (e.g. '; charset=utf-8')."""
    fields = parse_qs(query, keep_blank_values=True)
    answer = answer_format(fields.pop("format", []), accept)
    if content_type == JSON_TYPE:
        model_input, params = json_call(body, fields)
    elif content_type in MESH_TYPES:
        model_input, params = upload_call(body, MESH_TYPES[content_type], fields, max_vertices)
    else:
        known = ", ".join([JSON_TYPE, *MESH_TYPES])
        raise RequestError(
            415, f"Content-Type {content_type or '(none)'}: use one of {known}", "Content-Type"
        )
    return Call(model_input, params, answer)


def answer_format(formats: list[str], accept: str) -> str:
    """The query's format, else the first binary type the Accept header names, else json."""
    if len(formats) > 1 or (formats and formats[0] not in ANSWER_TYPES):
        raise RequestError(400, f"format: one of {', '.join(ANSWER_TYPES)} expected, got {formats}", "format")
    if formats:
        return formats[0]
    accepted = [kind.split(";")[0].strip() for kind in accept.split(",")]
    return next((name for name, kind in ANSWER_TYPES.items() if kind in accepted and name != "json"), "json")


def json_call(body: bytes, query: dict[str, list[str]]) -> tuple[dict, dict]:
    """The mesh and conditions of a JSON body; NaN and Infinity are read, for the package to refuse."""
    if query:
        name = sorted(query)[0]
        raise RequestError(400, f"{name}: a JSON request's conditions go in its body", name)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError; nested too deep
        raise RequestError(400, f"body: not JSON ({type(exc).__name__}: {exc})", "body") from None
    if not isinstance(data, dict):
        raise RequestError(400, f"body: a JSON object expected, got {type(data).__name__}", "body")
    unknown = sorted(set(data) - {*MESH, *CONDITIONS})
    if unknown:
        expected = ", ".join([*MESH, *CONDITIONS])
        raise RequestError(400, f"{unknown[0]}: not a field of a simulation ({expected})", unknown[0])
    for name in MESH:
        if name not in data:
            raise RequestError(400, f"{name}: missing", name)
    return {name: data[name] for name in MESH}, {name: data[name] for name in CONDITIONS if name in data}


def upload_call(
    body: bytes, file_type: str, query: dict[str, list[str]], max_vertices: int
) -> tuple[dict, dict]:
    """The mesh of an uploaded file and the conditions of the query (numbers comma-separated)."""
    params: dict = {}
    for name, values in query.items():
        if name not in CONDITIONS:
            raise RequestError(400, f"{name}: not a condition ({', '.join(CONDITIONS)})", name)
        if name not in ROWS and len(values) > 1:
            raise RequestError(400, f"{name}: given {len(values)} times", name)
        if name == "integrator":
            params[name] = values[0]
        elif name in ROWS:
            params[name] = [query_numbers(value, name) for value in values]
        elif name in ("frames", "dt"):
            params[name] = query_numbers(values[0], name)[0]
        else:
            params[name] = query_numbers(values[0], name)
    vertices, faces = read_mesh(io.BytesIO(body), file_type, f"body ({file_type.upper()})", max_vertices)
    return {"vertices": vertices, "faces": faces}, params


def query_numbers(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise RequestError(
            400, f"{name}: comma-separated numbers expected, got {text[:80]!r}", name
        ) from None


def json_answer(out: dict[str, np.ndarray]) -> bytes:
    return json.dumps({name: finite_or_null(a) for name, a in out.items()}, allow_nan=False).encode()


def finite_or_null(a: np.ndarray) -> list:
    """Nested lists, with a value that JSON cannot hold (NaN, Inf: a rollout that blew up) as null."""
    finite = np.isfinite(a)
    return a.tolist() if finite.all() else np.where(finite, a.astype(object), None).tolist()


def npz_answer(out: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **out)
    return buffer.getvalue()


def frames_answer(out: dict[str, np.ndarray]) -> tuple[int, Iterator[bytes]]:
    """The binary frames answer's length in bytes, and its pieces: the header, then one frame each."""
    vertices = np.asarray(out["vertices"], "<f4")
    header = {"frames": vertices.shape[0], "vertices": vertices.shape[1]}
    header |= {name: finite_or_null(a) for name, a in out.items() if name != "vertices"}
    text = json.dumps(header, allow_nan=False).encode()
    text += b" " * (-len(text) % 4)  # the frames start 4-byte aligned, for a Float32Array view
    length = 4 + len(text) + vertices.nbytes

    def pieces() -> Iterator[bytes]:
        yield struct.pack("<I", len(text)) + text
        for frame in vertices:
            yield frame.tobytes()

    return length, pieces()
