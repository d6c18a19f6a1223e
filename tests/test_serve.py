"""`neurok serve`: real HTTP against a started server (a thread, a free port) with a tiny registered model."""

from __future__ import annotations

import http.client
import io
import json
import signal
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pytest
import torch
import trimesh

from conftest import registered_model
from neurok.cli.main import build_parser
from neurok.serve.cache import PreparedCache
from neurok.serve.limits import Limits
from neurok.serve.server import SimulationServer
from neurok.serve.service import load_service

pytestmark = pytest.mark.e2e  # a service through the real stack

torch.set_num_threads(1)

LIMITS = Limits(max_vertices=200, max_frames=8, max_body_bytes=2**20)
CONDITIONS = {
    "gravity": [0.0, -0.1, 0.0],
    "initial_velocity": [0.01, 0.0, 0.0],
    "pokes": [[0.3, 0.0, 0.0, -0.02, 0.0, 0.0, 0.0, 0.05]],
    "frames": 3,
}


def sphere(radius: float = 0.3) -> dict:
    """An icosphere of 42 vertices; each radius is another mesh to the cache."""
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=radius)
    return {"vertices": np.asarray(mesh.vertices, np.float64), "faces": np.asarray(mesh.faces, np.int64)}


def as_json(mesh: dict, **fields) -> bytes:
    return json.dumps({k: v.tolist() for k, v in mesh.items()} | fields).encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server on a free port of 127.0.0.1 in a thread, with the registered champion loaded."""
    with registered_model(tmp_path_factory.mktemp("serve")) as registry:
        service = load_service("models:/neurok@champion", LIMITS)
        server = SimulationServer(service, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield {"server": server, "service": service, "registry": registry}
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def call(
    server: SimulationServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    length: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request; Content-Length is sent (when `length`) unless given."""
    headers = dict(headers or {})
    if length:
        headers.setdefault("Content-Length", str(len(body)))
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=300)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def simulate(server: SimulationServer, body: bytes, path: str = "/simulate", **headers: str) -> dict:
    status, _, answer = call(server, "POST", path, body, {"Content-Type": "application/json", **headers})
    assert status == 200, answer[:2000]
    return json.loads(answer)


def test_health_and_version(served):
    status, headers, body = call(served["server"], "GET", "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"status": "ok"}
    status, _, body = call(served["server"], "GET", "/version")
    version = json.loads(body)
    assert status == 200
    assert version["model_uri"] == f"models:/neurok/{served['registry']['v1']}"  # the alias, resolved
    assert (version["registered_name"], version["registered_version"]) == ("neurok", served["registry"]["v1"])
    assert version["neurok"] and version["run_id"] and version["dataset_content_hash"] == "abc123"


def test_simulate_matches_predict_and_prepares_a_mesh_once(served, tmp_path):
    server, cache = served["server"], served["service"].cache
    mesh = sphere(0.31)
    hits, misses = cache.hits, cache.misses
    out = simulate(server, as_json(mesh, **CONDITIONS))
    vertices = np.asarray(out["vertices"])
    assert vertices.shape == (CONDITIONS["frames"] + 1, len(mesh["vertices"]), 3)
    assert len(out["time"]) == len(out["kinetic"]) == len(out["potential"]) == CONDITIONS["frames"] + 1
    size = np.ptp(mesh["vertices"], axis=0).max()
    assert np.abs(vertices[0] - mesh["vertices"]).max() < 1e-4 * size  # it starts at the mesh
    model = mlflow.pyfunc.load_model("models:/neurok@champion", dst_path=str(tmp_path))
    expected = model.predict(mesh, params={**CONDITIONS, "pokes": CONDITIONS["pokes"][0]})
    for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-6, atol=1e-9, err_msg=name)
    assert (cache.hits, cache.misses) == (hits, misses + 1)
    again = simulate(server, as_json(mesh, frames=2, integrator="rk4"))  # other conditions, same mesh
    assert np.asarray(again["vertices"]).shape == (3, len(mesh["vertices"]), 3)
    assert (cache.hits, cache.misses) == (hits + 1, misses + 1)


@pytest.mark.parametrize("ask", [{"Accept": "application/octet-stream"}, {"path": "/simulate?format=npz"}])
def test_npz_answer_holds_the_json_answers_arrays(served, ask):
    body = as_json(sphere(), **CONDITIONS)
    as_arrays = simulate(served["server"], body)
    path = ask.pop("path", "/simulate")
    headers = {"Content-Type": "application/json", **ask}
    status, answer_headers, answer = call(served["server"], "POST", path, body, headers)
    assert status == 200 and answer_headers["Content-Type"] == "application/octet-stream"
    with np.load(io.BytesIO(answer)) as npz:
        assert sorted(npz.files) == sorted(as_arrays)
        for name, value in as_arrays.items():
            np.testing.assert_array_equal(npz[name], value, err_msg=name)


@pytest.mark.parametrize(
    "ask", [{"Accept": "application/x-neurok-frames"}, {"path": "/simulate?format=frames"}]
)
def test_frames_answer_is_a_header_then_float32_frames(served, ask):
    """The playground's format (protocol.py): uint32 n, an n-byte JSON header, then each frame as float32."""
    body = as_json(sphere(), **CONDITIONS)
    as_arrays = simulate(served["server"], body)
    path = ask.pop("path", "/simulate")
    status, headers, answer = call(
        served["server"], "POST", path, body, {"Content-Type": "application/json", **ask}
    )
    assert status == 200 and headers["Content-Type"] == "application/x-neurok-frames"
    n = int.from_bytes(answer[:4], "little")
    assert (4 + n) % 4 == 0  # the frames start aligned for a Float32Array
    header = json.loads(answer[4 : 4 + n])
    frames = np.frombuffer(answer[4 + n :], "<f4").reshape(header["frames"], header["vertices"], 3)
    np.testing.assert_allclose(frames, as_arrays["vertices"], rtol=1e-6, atol=1e-7)
    assert int(headers["Content-Length"]) == len(answer)
    for name in ("time", "kinetic", "potential", "energy_drift"):
        assert header[name] == as_arrays[name], name


def test_mesh_upload_matches_json_arrays(served):
    mesh = sphere()
    rows = [f"v {x!r} {y!r} {z!r}" for x, y, z in mesh["vertices"].tolist()]
    rows += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh["faces"].tolist()]
    obj = ("\n".join(rows) + "\n").encode()
    query = "gravity=0,-0.1,0&initial_velocity=0.01,0,0&pokes=0.3,0,0,-0.02,0,0,0,0.05&frames=3"
    uploaded = simulate(served["server"], obj, f"/simulate?{query}", **{"Content-Type": "model/obj"})
    as_arrays = simulate(served["server"], as_json(mesh, **CONDITIONS))
    for name, value in as_arrays.items():
        np.testing.assert_allclose(uploaded[name], value, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize(
    ("file_type", "content_type"), [("ply", "application/ply"), ("glb", "model/gltf-binary")]
)
def test_ply_and_glb_uploads(served, file_type, content_type):
    mesh = sphere(0.29)
    data = trimesh.Trimesh(mesh["vertices"], mesh["faces"], process=False).export(file_type=file_type)
    out = simulate(served["server"], data, "/simulate?frames=2", **{"Content-Type": content_type})
    vertices = np.asarray(out["vertices"])
    assert vertices.shape == (3, len(mesh["vertices"]), 3)
    np.testing.assert_allclose(vertices[0], mesh["vertices"], atol=1e-6)  # GLB stores float32


FIELDS = {k: v.tolist() for k, v in sphere().items()}


def body(**fields) -> bytes:
    return json.dumps({**FIELDS, "frames": 2, **fields}).encode()


def big_mesh() -> bytes:
    mesh = trimesh.creation.icosphere(subdivisions=3)  # 642 vertices: over LIMITS.max_vertices
    return json.dumps({"vertices": mesh.vertices.tolist(), "faces": mesh.faces.tolist()}).encode()


JSON = {"Content-Type": "application/json"}
MALFORMED = {
    "bad JSON": ("POST", "/simulate", b'{"vertices": [[0, 0', JSON, 400, "body"),
    "not an object": ("POST", "/simulate", b"[1, 2]", JSON, 400, "body"),
    "missing vertices": (
        "POST",
        "/simulate",
        json.dumps({"faces": FIELDS["faces"]}).encode(),
        JSON,
        400,
        "vertices",
    ),
    "unknown field": ("POST", "/simulate", body(poke=[0.0] * 8), JSON, 400, "poke"),
    "NaN in vertices": (
        "POST",
        "/simulate",
        body(vertices=[[float("nan"), 0.0, 0.0], *FIELDS["vertices"][1:]]),
        JSON,
        422,
        "vertices",
    ),
    "vertices not numbers": ("POST", "/simulate", body(vertices="a mesh"), JSON, 422, "vertices"),
    "faces of two": ("POST", "/simulate", body(faces=[[0, 1]] * 4), JSON, 422, "faces"),
    "face index out of range": (
        "POST",
        "/simulate",
        body(faces=[[0, 1, 99], *FIELDS["faces"][1:]]),
        JSON,
        422,
        "faces",
    ),
    "too many vertices": ("POST", "/simulate", big_mesh(), JSON, 422, "vertices"),
    "too many frames": ("POST", "/simulate", body(frames=LIMITS.max_frames + 1), JSON, 422, "frames"),
    "a poke row of 7": (
        "POST",
        "/simulate",
        body(pokes=[[0.3, 0.0, 0.0, -0.02, 0.0, 0.0, 0.0]]),
        JSON,
        422,
        "pokes",
    ),
    "negative frames": ("POST", "/simulate", body(frames=-3), JSON, 422, "frames"),
    "fractional frames": ("POST", "/simulate", body(frames=2.5), JSON, 422, "frames"),
    "unknown integrator": ("POST", "/simulate", body(integrator="euler"), JSON, 422, "integrator"),
    "dt too small for the step budget": ("POST", "/simulate", body(dt=1 / 24000), JSON, 422, "dt"),
    "deeply nested JSON": ("POST", "/simulate", b"[" * 100_000, JSON, 400, "body"),
    "dt off the frame rate": ("POST", "/simulate", body(dt=0.007), JSON, 422, "dt"),
    "gravity of 2": ("POST", "/simulate", body(gravity=[0.0, -9.81]), JSON, 422, "gravity"),
    "condition in a JSON request's query": ("POST", "/simulate?frames=2", body(), JSON, 400, "frames"),
    "unknown format": ("POST", "/simulate?format=csv", body(), JSON, 400, "format"),
    "unreadable query number": (
        "POST",
        "/simulate?gravity=a,b,c",
        b"v 0 0 0\n",
        {"Content-Type": "model/obj"},
        400,
        "gravity",
    ),
    "not a mesh file": (
        "POST",
        "/simulate",
        b"\x00\x01 not a mesh",
        {"Content-Type": "application/ply"},
        422,
        "body",
    ),
    "unknown path": ("GET", "/simulations", b"", {}, 404, "path"),
    "GET /simulate": ("GET", "/simulate", b"", {}, 405, "method"),
    "POST /health": ("POST", "/health", b"", {}, 405, "method"),
    "unsupported content type": (
        "POST",
        "/simulate",
        body(),
        {"Content-Type": "text/html"},
        415,
        "Content-Type",
    ),
    "no content type": ("POST", "/simulate", body(), {}, 415, "Content-Type"),
    "body over the limit": (
        "POST",
        "/simulate",
        b"{}",
        {**JSON, "Content-Length": str(2**20 + 1)},
        413,
        "body",
    ),
    "bad content length": (
        "POST",
        "/simulate",
        b"{}",
        {**JSON, "Content-Length": "lots"},
        400,
        "Content-Length",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_requests_get_a_4xx_naming_the_field(served, case):
    method, path, data, headers, status, field = MALFORMED[case]
    got, answer_headers, answer = call(served["server"], method, path, data, headers)
    assert got == status, answer[:2000]
    assert answer_headers["Content-Type"] == "application/json"
    refusal = json.loads(answer)
    assert refusal["field"] == field and refusal["error"]
    assert "Traceback" not in refusal["error"]


def test_missing_content_length_gets_411(served):
    status, _, answer = call(served["server"], "POST", "/simulate", headers=JSON, length=False)
    assert status == 411 and json.loads(answer)["field"] == "Content-Length"


def test_cache_keeps_the_last_used():
    cache: PreparedCache[str] = PreparedCache(2)
    for key in ("a", "b", "a", "c"):  # "a" used again before "c" arrives: "b" goes
        cache.get_or_prepare(key, lambda key=key: key.upper())
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 2)
    assert cache.get_or_prepare("b", lambda: "again") == "again"
    assert cache.get_or_prepare("c", lambda: "never") == "C"


def test_cli_serves_and_stops_on_ctrl_c(served):
    """`neurok serve` in its own process: it prints its URL, answers, and exits 0 on SIGINT (Ctrl-C)."""
    args = build_parser().parse_args(["serve", "--model", "models:/neurok@champion"])
    assert (args.host, args.port, args.max_vertices, args.max_frames) == ("127.0.0.1", 8765, 20_000, 600)
    code = (  # Python's own Ctrl-C handler, even where the test runner's parent ignores SIGINT
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from neurok.cli.main import main; sys.exit(main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", code, "serve", "--model", "models:/neurok@champion", "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving models:/neurok/" in line, line
        url = urlsplit(line.split(" on ")[1].split()[0])
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        connection.request("GET", "/health")
        assert connection.getresponse().status == 200
        connection.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
