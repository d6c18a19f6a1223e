"""The registry: a briefly trained tiny model as a simulator package, alias gates, pull, and serving."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
import trimesh
from mlflow.tracking import MlflowClient

from conftest import GOOD, registered_model
from neurok.cli.main import main
from neurok.errors import BadInputError
from neurok.track.registry import CHALLENGER, CHAMPION, RegistryConfig, promote

pytestmark = pytest.mark.e2e  # a command or a service through the real stack

torch.set_num_threads(1)


def mesh_input(subdivisions: int) -> dict:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.3)
    return {"vertices": np.asarray(mesh.vertices, np.float64), "faces": np.asarray(mesh.faces, np.int64)}


CONDITIONS = {
    "gravity": [0.0, -0.1, 0.0],  # gentle: a model trained for seconds is nearly rigid
    "initial_velocity": [0.01, 0.0, 0.0],
    "pokes": [0.3, 0.0, 0.0, -0.02, 0.0, 0.0, 0.0, 0.05],
    "drags": [0.0, 0.3, 0.0, 0.0, 0.002, 0.0, 0.0, 0.1],
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A tracking store with a briefly trained model registered as version 1 (champion)."""
    with registered_model(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


def test_predict_any_vertex_count(registry):
    (registry["tmp"] / "champion").mkdir()
    model = mlflow.pyfunc.load_model("models:/neurok@champion", dst_path=str(registry["tmp"] / "champion"))
    for subdivisions in (1, 2):  # 42 and 162 vertices
        inputs = mesh_input(subdivisions)
        out = model.predict(inputs, params={"frames": 3, "integrator": "rk4", **CONDITIONS})
        assert out["vertices"].shape == (4, len(inputs["vertices"]), 3)
        assert out["kinetic"].shape == out["potential"].shape == (4,)
        assert np.isfinite(out["vertices"]).all()
        np.testing.assert_allclose(out["vertices"][0], inputs["vertices"], atol=0.05)  # starts at the mesh
    meta = model.metadata
    assert meta.signature.params.to_dict()[0]["name"] == "frames"
    assert meta.signature.inputs.input_names() == ["vertices", "faces"]
    assert meta.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.model"  # a pyfunc, not pt2


def test_predict_conditions_are_optional_and_act(registry):
    (registry["tmp"] / "optional").mkdir()
    model = mlflow.pyfunc.load_model("models:/neurok@champion", dst_path=str(registry["tmp"] / "optional"))
    mesh = mesh_input(1)
    still = model.predict(mesh, params={"frames": 3})  # no gravity, velocity, pokes or drags
    assert np.abs(still["vertices"] - still["vertices"][:1]).max() < 1e-6  # stays where it was put
    moving = model.predict(mesh, params={"frames": 3, "initial_velocity": [0.5, 0.0, 0.0]})
    travel = (moving["vertices"][-1] - moving["vertices"][0]).mean(axis=0)
    assert travel[0] > 0.01 and abs(travel[1]) < 0.1 * travel[0]  # the object moves along the velocity
    with pytest.raises(BadInputError, match=r"params\.pokes: rows of 8 numbers expected, got 5"):
        model.predict(mesh, params={"frames": 1, "pokes": [0.0] * 5})
    broken = {**mesh, "vertices": np.vstack([mesh["vertices"], [[np.nan, 0.0, 0.0]]])}
    with pytest.raises(BadInputError, match=r"model_input: vertex 42 is NaN or Inf"):
        model.predict(broken, params={"frames": 1})


def test_worse_challenger_keeps_the_champion(registry, capsys):
    uri, client = registry["uri"], MlflowClient(registry["uri"])
    worse = registry["add"]({**GOOD, "test/chamfer_l1": 0.2})
    assert str(client.get_model_version_by_alias("neurok", CHALLENGER).version) == worse
    decision = promote(uri, "neurok@challenger", RegistryConfig())
    assert not decision.promoted and "test/chamfer_l1" in decision.reason
    assert str(client.get_model_version_by_alias("neurok", CHAMPION).version) == registry["v1"]
    tags = client.get_model_version("neurok", worse).tags
    assert tags["promotion.decision"] == "rejected"
    assert tags["promotion.previous_champion"] == registry["v1"]
    compared = json.loads(tags["promotion.compared"])
    assert compared["test/chamfer_l1"] == {"challenger": 0.2, "champion": 0.1, "mode": "min", "passed": False}
    assert compared["test/energy_drift"]["passed"]

    better = registry["add"]({**GOOD, "test/chamfer_l1": 0.09})
    assert main(["registry", "promote", f"neurok/{better}"]) == 0
    assert str(client.get_model_version_by_alias("neurok", CHAMPION).version) == better
    old = client.get_model_version("neurok", registry["v1"]).tags
    assert old["champion.replaced_by"] == better and old["champion.until"]
    assert main(["registry", "promote", f"neurok/{worse}"]) == 1  # still worse than the new champion
    assert main(["registry", "promote", f"neurok/{worse}", "gates=[]"]) == 0  # what `neurok tune` advises
    assert str(client.get_model_version_by_alias("neurok", CHAMPION).version) == worse
    assert main(["registry", "list", "neurok"]) == 0
    capsys.readouterr()
    assert main(["registry", "list", "neurok", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"not JSON: {c}"))
    assert {str(r["version"]) for r in listed} >= {registry["v1"], worse, better}
    # restore version 1 as champion for the tests that follow
    client.set_registered_model_alias("neurok", CHAMPION, registry["v1"])


def test_pull_loads_in_a_fresh_process(registry, capsys):
    out = registry["tmp"] / "pulled"
    assert main(["registry", "pull", "neurok@champion", "--out", str(out)]) == 0
    model_dir = out / "simulator" if (out / "simulator").is_dir() else out
    assert (model_dir / "MLmodel").is_file() and (model_dir / "artifacts" / "model.ckpt").is_file()
    assert json.loads((model_dir / "registry.json").read_text())["version"] == registry["v1"]
    code = (
        "import sys, json, numpy as np, mlflow, trimesh\n"
        "mesh = trimesh.creation.box(extents=(0.4, 0.2, 0.3)).subdivide()\n"  # never seen in training
        "x = {'vertices': np.asarray(mesh.vertices, float), 'faces': np.asarray(mesh.faces, np.int64)}\n"
        "for uri in (sys.argv[1], 'models:/neurok@champion'):\n"  # downloads into the test's folder
        "    model = mlflow.pyfunc.load_model(uri, dst_path=sys.argv[2])\n"
        "    out = model.predict(x, params={'frames': 2, 'gravity': [0, -0.1, 0]})\n"
        "    print(json.dumps(list(out['vertices'].shape)))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"]}
    loaded = registry["tmp"] / "loaded"
    loaded.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), str(loaded)],
        capture_output=True,
        text=True,
        cwd=registry["tmp"],
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[3,", "26,", "3]"] * 2


def test_simulate_cli_takes_a_registry_uri(registry, tmp_path, capsys):
    """`neurok simulate --model models:/neurok@champion` runs the package's own settings."""
    mesh = tmp_path / "box.obj"
    trimesh.creation.box(extents=(0.4, 0.2, 0.3)).export(mesh)
    out = tmp_path / "rollout"
    args = ["simulate", "--model", "models:/neurok@champion", "--mesh", str(mesh), "--out", str(out)]
    assert main([*args, "--frames", "2", "render.video=none", "render.viewer=false"]) == 0
    assert "2 frames of 8 vertices" in capsys.readouterr().out
    with np.load(next(out.glob("*.npz"))) as rollout:
        assert rollout["vertices"].shape == (3, 8, 3)
    assert main(["simulate", "--model", "models:/neurok@nobody", "--mesh", str(mesh), "--out", str(out)]) == 2
    assert "models:/neurok@nobody" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_http(registry):
    port = _free_port()
    bin_dir = os.path.dirname(sys.executable)  # the server execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"], "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = "300"  # the default 60 s is short on a busy 2-core box
    mlflow_bin = os.path.join(bin_dir, "mlflow")
    cmd = [
        mlflow_bin,
        "models",
        "serve",
        "-m",
        "models:/neurok@champion",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with open(registry["tmp"] / "serve.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (registry["tmp"] / "serve.log").read_text()
            time.sleep(1)
        inputs = {k: v.tolist() for k, v in mesh_input(1).items()}
        body = json.dumps({"inputs": inputs, "params": {"frames": 2, **CONDITIONS}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                predictions = json.loads(r.read())["predictions"]
        except urllib.error.HTTPError as exc:
            pytest.fail(f"HTTP {exc.code}: {exc.read().decode()[:2000]}")
        assert np.asarray(predictions["vertices"]).shape == (3, 42, 3)
        assert len(predictions["kinetic"]) == 3
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_list_json_is_strict_json_when_a_metric_is_not_finite():
    from neurok.cli.registry import _finite_or_null

    rows = [{"version": "3", "metrics": {"test/energy_drift": float("inf"), "test/chamfer_l1": 0.1}}]
    text = json.dumps(_finite_or_null(rows), allow_nan=False)
    assert json.loads(text) == [
        {"version": "3", "metrics": {"test/energy_drift": None, "test/chamfer_l1": 0.1}}
    ]
