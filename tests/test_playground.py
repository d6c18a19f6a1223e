"""The browser playground (GET / of `neurok serve`) in headless Chromium against a started server with a
tiny registered model: it loads with no errors and nothing from elsewhere, renders its mesh, and a poke
(called, clicked or dragged) brings a rollout that plays frame by frame."""

from __future__ import annotations

import http.client
import json
import runpy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser import CHROMIUM, Browser
from conftest import registered_model
from neurok.serve import playground
from neurok.serve.limits import Limits
from neurok.serve.server import SimulationServer
from neurok.serve.service import load_service

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.e2e  # a service and a browser through the real stack

torch.set_num_threads(1)

LIMITS = Limits(max_vertices=3000, max_frames=60, max_body_bytes=4 * 2**20)
PLAYED = "(r => r.frames > 0 && r.shown === r.frames - 1)(playground.last)"  # its last frame drawn
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (.ci/run installs Debian's chromium)"
)
# A 0.4 m cube as an OBJ exporter writes it: quads, v/vt/vn indices, the last face by negative indices.
CUBE_OBJ = """# cube
v 0 0 0\nv 0.4 0 0\nv 0.4 0.4 0\nv 0 0.4 0\nv 0 0 0.4\nv 0.4 0 0.4\nv 0.4 0.4 0.4\nv 0 0.4 0.4
vt 0 0\nvn 0 0 1
f 1/1/1 4/1/1 3/1/1 2/1/1\nf 5/1/1 6/1/1 7/1/1 8/1/1\nf 1/1/1 2/1/1 6/1/1 5/1/1
f 2//1 3//1 7//1 6//1\nf 3 4 8 7\nf -4 -8 -5 -1
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server on a free port of 127.0.0.1 in a thread, with the registered champion loaded."""
    assert playground.available(), "three.js is not vendored: run `make three` (needs npm)"
    with registered_model(tmp_path_factory.mktemp("playground")):
        service = load_service("models:/neurok@champion", LIMITS)
        server = SimulationServer(service, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield {"server": server, "service": service}
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    """Chromium showing the playground, its default icosphere loaded and prepared on the server."""
    with Browser(tmp_path_factory.mktemp("chromium")) as browser:
        browser.open(f"{served['server'].url}/")
        browser.wait_for(f"window.playground && playground.ready && {PLAYED}", timeout=120)
        yield browser
        assert browser.errors() == []


def get(server: SimulationServer, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def mesh_pixels(png) -> int:
    """Pixels of the mesh's blue at any shading (the background and grid are grey, the arrow red)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((b > r + 40) & (b > g + 15)).sum())


def play(page: Browser, vertex: int, timeout: float = 60) -> dict:
    """Poke `vertex` as a click does, wait until the rollout's last frame is on the canvas, and return the
    rollout's counters (not the rollout: its frames would be serialised by value, stalling the page)."""
    assert page.evaluate(f"playground.poke({vertex}).then(rollout => rollout !== null)"), "poke refused"
    page.wait_for(PLAYED, timeout)
    return page.evaluate(
        "(({conditions, frames, received, drawn, skipped, latencyMs, fps}) =>"
        " ({conditions, frames, received, drawn, skipped, latencyMs, fps}))(playground.last)"
    )


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_page_is_one_file_with_three_inlined(served, path):
    status, headers, body = get(served["server"], path)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "Copyright 2010-2024 Three.js Authors" in page  # the vendored build, its license header kept
    assert "<script src" not in page and "https://" not in page.replace("https://github.com", "")


def test_page_without_three_is_refused_with_what_to_do(served, monkeypatch):
    monkeypatch.setattr(playground, "THREE", "vendor/not-built.js")
    playground.playground_page.cache_clear()
    try:
        status, _, body = get(served["server"], "/")
    finally:
        playground.playground_page.cache_clear()
    assert status == 503
    assert "make three" in json.loads(body)["error"]


def test_image_vendors_the_three_that_make_three_does():
    """The Dockerfile's node stage pins the release and integrity scripts/build_three.py pins."""
    pins = runpy.run_path(str(ROOT / "scripts" / "build_three.py"))  # its main() does not run
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG THREE_VERSION={pins['VERSION']}\n" in dockerfile
    assert f"ARG THREE_INTEGRITY={pins['INTEGRITY']}\n" in dockerfile


@needs_chromium
def test_page_renders_its_mesh_and_fetches_only_its_api(served, page, tmp_path):
    state = page.evaluate("({v: playground.vertices, f: playground.faces, drawn: playground.framesDrawn})")
    assert state["v"] == 642 and state["f"] == 1280 and state["drawn"] >= 1  # the icosphere, prepared
    assert page.errors() == []
    url = served["server"].url
    fetched = {u.removeprefix(url).split("?")[0] for u in page.requests() if not u.startswith("blob:")}
    assert fetched <= {"/", "/version", "/simulate"}, fetched  # three.js came inlined
    assert mesh_pixels(page.screenshot(tmp_path / "page.png")) > 5000


@needs_chromium
def test_poke_streams_frames_and_plays_them(served, page):
    cache = served["service"].cache
    hits, misses = cache.hits, cache.misses
    page.evaluate("document.getElementById('frames').value = 30")
    rollout = play(page, 0)
    assert rollout["frames"] == rollout["received"] == 31
    assert rollout["drawn"] + rollout["skipped"] == 31 and rollout["drawn"] >= 10
    assert 0 < rollout["latencyMs"] < 30_000 and rollout["fps"] > 0
    x, y, z, fx, fy, fz, t0, t1 = rollout["conditions"]["pokes"][0]
    assert np.isclose(np.linalg.norm([fx, fy, fz]), 1.0) and (t0, t1) == (0, 0.1)  # 1 N, the default
    assert np.dot([x, y, z], [fx, fy, fz]) < 0  # inward on a sphere about the origin
    assert (cache.hits, cache.misses) == (hits + 1, misses)  # the page prepared its mesh on load
    first, last = page.evaluate(
        "(r => [0, r.frames - 1].map(i => Array.from(r.data.subarray(i * r.data.length / r.frames,"
        " (i + 1) * r.data.length / r.frames))))(playground.last)"
    )
    assert np.abs(np.subtract(last, first)).max() > 1e-4  # the poke moved the mesh


@needs_chromium
def test_gravity_toggle_sends_gravity_and_the_mesh_falls(page):
    page.evaluate("document.getElementById('gravity').checked = true")
    try:
        rollout = play(page, 5)
    finally:
        page.evaluate("document.getElementById('gravity').checked = false")
    assert rollout["conditions"]["gravity"] == [0, -9.81, 0]
    seconds = page.evaluate("(r => r.time[r.frames - 1] - r.time[0])(playground.last)")
    drop = page.evaluate(
        "(r => { const n = r.data.length / r.frames, y = f => r.data.subarray(f * n, (f + 1) * n)"
        ".filter((_, i) => i % 3 === 1).reduce((a, b) => a + b) / (n / 3);"
        " return y(0) - y(r.frames - 1); })(playground.last)"
    )
    assert drop == pytest.approx(9.81 * seconds**2 / 2, rel=0.05)  # free fall (the poke is 0.1 N s)


@needs_chromium
def test_click_pokes_inward_and_drag_pokes_along_it(page):
    centre = page.evaluate(
        "(() => { const r = document.getElementById('view').getBoundingClientRect();"
        " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
    )
    pokes = page.evaluate("playground.pokes")
    page.click(*centre)
    page.wait_for(f"playground.pokes === {pokes + 1} && {PLAYED}")
    x, y, z, *force = page.evaluate("playground.last.conditions.pokes[0]")
    a, e = page.evaluate("[playground.orbit.azimuth, playground.orbit.elevation]")
    camera = [np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)]  # from the target to the camera
    assert np.dot([x, y, z], camera) > 0.4  # the vertex under the centre faces the camera
    assert np.dot(force[:3], [x, y, z]) < 0  # and is pushed inward

    page.drag(centre, (centre[0] + 80, centre[1]))
    page.wait_for(f"playground.pokes === {pokes + 2} && playground.last.received > 0")
    force = np.asarray(page.evaluate("playground.last.conditions.pokes[0]")[3:6])
    azimuth = page.evaluate("playground.orbit.azimuth")
    right = [np.cos(azimuth), 0, -np.sin(azimuth)]  # the camera's x axis, looking at its target
    assert np.dot(force / np.linalg.norm(force), right) > 0.95  # along the drag: screen right

    azimuth = page.evaluate("playground.orbit.azimuth")
    page.drag((20, centre[1]), (120, centre[1]))  # from the background: orbits, pokes nothing
    assert page.evaluate("playground.orbit.azimuth") != azimuth
    assert page.evaluate("playground.pokes") == pokes + 2


@needs_chromium
def test_obj_file_input_loads_the_mesh_and_refusals_are_said(page, tmp_path):
    obj = tmp_path / "cube.obj"
    obj.write_text(CUBE_OBJ)
    node = page.send(
        "DOM.querySelector", nodeId=page.send("DOM.getDocument")["root"]["nodeId"], selector="#obj"
    )
    page.send("DOM.setFileInputFiles", files=[str(obj)], nodeId=node["nodeId"])
    page.wait_for("playground.ready && playground.vertices === 8", timeout=120)
    assert page.evaluate("playground.faces") == 12  # six quads, as fans
    rollout = play(page, 6)
    assert rollout["received"] == rollout["frames"]

    page.evaluate("playground.icosphere(5)")  # 10242 vertices: refused by the server, said in the status
    page.wait_for("document.getElementById('status').className === 'error'", 60, errors_end_it=False)
    assert "max_vertices=3000" in page.evaluate("document.getElementById('status').textContent")
    assert not page.evaluate("playground.ready") and page.evaluate("playground.errors") == []
    refused = "the server responded with a status of 422"  # Chromium logs a 4xx answer as an error
    assert [e for e in page.errors() if refused not in e] == []
    page.forget_errors()
    page.evaluate("playground.icosphere()")  # the page as the fixture made it
    page.wait_for("playground.ready && playground.vertices === 642", timeout=120)
