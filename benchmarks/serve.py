"""`neurok serve`'s playground in headless Chromium: poke-to-first-frame latency on a 2562-vertex mesh
whose prepared object is cached, and playback frames/s of a 10242-vertex mesh.

The latency is the page's own measure: from poke() (what a click calls) to its rollout's first frame on
the canvas; it holds the request (mesh and poke as JSON), the server's rollout, the binary frames answer
and the draw. The server's share (SimulationService.simulate on the same requests) is shown beside it.
Playback frames/s are frames drawn per second while a rollout plays at its own rate (30 fps: a page that
keeps up shows 30); a frame the page is late for is skipped, not queued. WebGL runs on SwiftShader
(software), so the draw cost is the CPU's: the page turns MSAA off on a software renderer, and the last
column forces it on (?antialias=on), as a GPU's page draws. The screenshot (docs/playground.png) is the
2562-vertex sphere after a poke, MSAA on.

The load test (after the playground, or alone with --clients-only: no Chromium) is plain HTTP from
threads of this process: 8 clients at once, each sending 20 POST /simulate one after another (a poke on
the same 2562-vertex sphere, warm in the cache), against 1 client sending 20; per-request latency
(request sent to answer read) p50 / p95 / max, requests/s, and errors (any answer but 200). While the 8
run, one request of each kind the API refuses is sent: each is due a 4xx naming its field, never a 500.

Usage: python benchmarks/serve.py [--model URI] [--frames 60] [--pokes 5] [--threads 1]
                                  [--screenshot docs/playground.png]
                                  [--clients-only] [--clients 8] [--requests 20] [--format frames]
Without --model, a tiny model is trained and registered in a temporary store (tests/conftest.py's).
Writes benchmarks/results/serve.{json,md} (the playground) and serve_load.{json,md} (the load test).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trimesh

from common import ROOT, write_results
from neurok.serve.limits import Limits
from neurok.serve.server import SimulationServer
from neurok.serve.service import SimulationService, load_service
from neurok.threads import limit_threads

sys.path.insert(0, str(ROOT / "tests"))  # browser (the DevTools driver), conftest (the tiny model)

LATENCY_MESH, PLAYBACK_MESH = 4, 5  # icosphere levels: 2562 and 10242 vertices
FIELDS = "frames, drawn, skipped, latencyMs, fps, drawMs"
ROLLOUT = f"(({{{FIELDS}}}) => ({{{FIELDS}}}))"  # the counters of a rollout object, as JSON


@contextlib.contextmanager
def model_uri(uri: str | None, tmp: Path) -> Iterator[str]:
    """`uri` from the tracking store MLFLOW_TRACKING_URI names (else outputs/mlflow.db), or a tiny model."""
    if uri:
        import mlflow

        from neurok.track import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(ROOT / "outputs"))
        yield uri
        return
    from conftest import registered_model

    with registered_model(tmp):
        yield "models:/neurok@champion"


@contextlib.contextmanager
def serving(service: SimulationService) -> Iterator[SimulationServer]:
    server = SimulationServer(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def time_simulations(service: SimulationService) -> list[float]:
    """Each later call's seconds in SimulationService.simulate: the server's share of a poke."""
    seconds: list[float] = []
    simulate = service.simulate

    def timed(model_input: dict, params: dict):
        start = time.perf_counter()
        try:
            return simulate(model_input, params)
        finally:
            seconds.append(time.perf_counter() - start)

    service.simulate = timed
    return seconds


def open_page(page, url: str, frames: int) -> None:
    page.open(url)
    page.wait_for("window.playground && playground.ready", 300)
    page.evaluate(f"document.getElementById('frames').value = {frames}")


def load(page, level: int) -> float:
    """Seconds to show the page's icosphere of `level` and have it prepared on the server."""
    start = time.perf_counter()
    assert page.evaluate(f"playground.icosphere({level})"), page.evaluate("playground.errors")
    return time.perf_counter() - start


def poke(page, vertex: int, timeout: float = 120) -> dict:
    """One poke at `vertex`, played to its last frame; the rollout's counters."""
    page.evaluate(f"playground.poke({vertex}); true")  # not its promise: the rollout it brings is large
    page.wait_for("(r => r.frames > 0 && r.shown === r.frames - 1)(playground.last)", timeout, every=0.1)
    return page.evaluate(f"{ROLLOUT}(playground.last)")


def measure(page, level: int, pokes: int, server_seconds: list[float]) -> dict:
    """Load the icosphere of `level` (preparing it: the cache is warm after), then poke it `pokes` times
    at spread-out vertices, each rollout played to its end before the next poke."""
    prepare_s = load(page, level)
    vertices = page.evaluate("playground.vertices")
    del server_seconds[:]
    rollouts = [poke(page, (37 * k) % vertices) for k in range(pokes)]
    draw_ms = [ms for r in rollouts for ms in r["drawMs"][1:]]  # the first holds the mesh's first upload
    return {
        "vertices": vertices,
        "antialias": page.evaluate("playground.antialias"),
        "prepare_s": round(prepare_s, 2),
        "latency_ms": [round(r["latencyMs"], 1) for r in rollouts],
        "server_ms": [round(s * 1e3, 1) for s in server_seconds],
        "fps": [round(r["fps"], 1) for r in rollouts],
        "drawn": [r["drawn"] for r in rollouts],
        "skipped": [r["skipped"] for r in rollouts],
        "draw_ms_median": round(statistics.median(draw_ms), 2),
    }


JSON_BODY = {"Content-Type": "application/json"}
Answer = tuple[int, bytes, float]  # status (0: no answer), body, seconds


def sphere() -> dict:
    """The playground's icosphere of 2562 vertices (radius 0.5), as a request's lists."""
    mesh = trimesh.creation.icosphere(subdivisions=LATENCY_MESH, radius=0.5)
    return {"vertices": mesh.vertices.tolist(), "faces": mesh.faces.tolist()}


def poke_request(mesh: dict, vertex: int, frames: int) -> bytes:
    """What a playground click sends: a 1 N poke inward at `vertex` for the first 0.1 s."""
    x, y, z = mesh["vertices"][vertex]
    return json.dumps(
        {**mesh, "pokes": [[x, y, z, -2 * x, -2 * y, -2 * z, 0.0, 0.1]], "frames": frames}
    ).encode()


def malformed(mesh: dict, limits: Limits) -> dict[str, tuple[str, str, bytes, dict, int, str]]:
    """One request of each kind the API refuses: method, path, body, headers, and the status and field due.
    (tests/test_serve.py's list is sized to its own small limits, so not reused here.)"""

    def body(**fields) -> bytes:
        return json.dumps({**mesh, "frames": 1, **fields}).encode()

    def post(data: bytes, status: int, field: str, headers: dict = JSON_BODY) -> tuple:
        return "POST", "/simulate", data, headers, status, field

    nan = [[float("nan"), 0.0, 0.0], *mesh["vertices"][1:]]
    return {
        "bad JSON": post(b'{"vertices": [[0, 0', 400, "body"),
        "missing vertices": post(json.dumps({"faces": [[0, 1, 2]]}).encode(), 400, "vertices"),
        "NaN vertex": post(body(vertices=nan), 422, "vertices"),
        "faces of two": post(body(faces=[[0, 1]] * 4), 422, "faces"),
        "too many frames": post(body(frames=limits.max_frames + 1), 422, "frames"),
        "a poke row of 7": post(body(pokes=[[0.5, 0, 0, -1, 0, 0, 0]]), 422, "pokes"),
        "unknown integrator": post(body(integrator="euler"), 422, "integrator"),
        "unknown path": ("GET", "/simulations", b"", {}, 404, "path"),
        "wrong method": ("GET", "/simulate", b"", {}, 405, "method"),
        "bad content type": post(body(), 415, "Content-Type", {"Content-Type": "text/html"}),
    }


def send(
    server: SimulationServer, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> Answer:
    """One request on a connection of its own (the server answers HTTP/1.0), its answer read whole."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=600)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        status, answer = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        status, answer = 0, repr(exc).encode()
    finally:
        connection.close()
    return status, answer, time.perf_counter() - start


def clients(server: SimulationServer, n: int, bodies: list[bytes], path: str) -> dict:
    """`n` clients at once, each POSTing every body in turn: latency, throughput, errors (not 200)."""

    def client(_) -> list[Answer]:
        return [send(server, "POST", path, body, JSON_BODY) for body in bodies]

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        answers = [answer for answers in pool.map(client, range(n)) for answer in answers]
    end = time.perf_counter()
    ms = [seconds * 1e3 for _, _, seconds in answers]
    return {
        "clients": n,
        "requests": len(answers),
        "errors": sum(status != 200 for status, _, _ in answers),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(statistics.quantiles(ms, n=20, method="inclusive")[18], 1),
        "max_ms": round(max(ms), 1),
        "requests_per_s": round(len(ms) / (end - start), 2),
        "latency_ms": [round(x, 1) for x in ms],
        "end": end,
    }


def refuse(server: SimulationServer, cases: dict, gap: float) -> list[dict]:
    """Each malformed request, `gap` seconds apart: the status and field it got against those due."""
    refusals = []
    for name, (method, path, body, headers, status, field) in cases.items():
        time.sleep(gap)
        got, answer, seconds = send(server, method, path, body, headers)
        try:
            got_field = json.loads(answer)["field"]
        except (ValueError, KeyError, TypeError):
            got_field = None
        ok = got == status and got_field == field
        refusals.append(
            {
                "request": name,
                "status": got,
                "due": status,
                "field": got_field,
                "ok": ok,
                "ms": round(seconds * 1e3, 1),
                "at": time.perf_counter(),
            }
        )
    return refusals


def load_test(server: SimulationServer, service: SimulationService, args) -> dict:
    """1 client, then args.clients at once with the malformed requests spread over their run."""
    mesh = sphere()
    bodies = [poke_request(mesh, (37 * k) % len(mesh["vertices"]), args.frames) for k in range(args.requests)]
    path = f"/simulate?format={args.format}"
    status, answer, _ = send(server, "POST", path, bodies[0], JSON_BODY)  # prepares the mesh: warm after
    assert status == 200, answer[:2000]
    misses = service.cache.misses
    single = clients(server, 1, bodies, path)
    cases = malformed(mesh, service.limits)
    gap = 0.5 * args.clients * sum(single["latency_ms"]) / 1e3 / len(cases)  # over the load's first half
    with ThreadPoolExecutor(1) as pool:
        refusals = pool.submit(refuse, server, cases, gap)
        loaded = clients(server, args.clients, bodies, path)
        refused = refusals.result()
    single.pop("end")
    while_loaded = max(r.pop("at") for r in refused) < loaded.pop("end")
    return {
        "vertices": len(mesh["vertices"]),
        "answer_bytes": len(answer),
        "cache_misses_under_load": service.cache.misses - misses,
        "runs": [single, loaded],
        "refusals": refused,
        "refused_while_loaded": while_loaded,
    }


def playground(server: SimulationServer, seconds: list[float], args, tmp: Path) -> tuple[str, list[dict]]:
    """The page's WebGL renderer and its columns (measure's); the screenshot written."""
    from browser import Browser

    with Browser(tmp / "chromium", 1000, 640) as page:
        open_page(page, f"{server.url}/", args.frames)
        renderer = page.evaluate("playground.glRenderer")
        columns = [measure(page, level, args.pokes, seconds) for level in (LATENCY_MESH, PLAYBACK_MESH)]
        open_page(page, f"{server.url}/?antialias=on", args.frames)  # what a GPU's page draws
        columns.append(measure(page, PLAYBACK_MESH, args.pokes, seconds))
        load(page, LATENCY_MESH)
        poke(page, 0)
        page.screenshot(args.screenshot)
        assert page.errors() == [], page.errors()
    return renderer, columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="models:/NAME@ALIAS; default: a tiny model trained here")
    parser.add_argument("--frames", type=int, default=60, help="frames per rollout (30 fps: 60 is 2 s)")
    parser.add_argument("--pokes", type=int, default=5, help="pokes per measure")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads of the server")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "playground.png")
    parser.add_argument("--clients-only", action="store_true", help="only the load test (no Chromium)")
    parser.add_argument("--clients", type=int, default=8, help="the load test's concurrent clients")
    parser.add_argument("--requests", type=int, default=20, help="requests per client")
    parser.add_argument("--format", choices=["frames", "npz", "json"], default="frames", help="answer format")
    args = parser.parse_args()
    if not args.clients_only:
        from browser import CHROMIUM

        if CHROMIUM is None:
            sys.exit("serve.py: chromium not installed (--clients-only runs the load test alone)")
    os.chdir(ROOT)  # the tiny model's configs are read by relative path
    limit_threads(args.threads)
    with (
        tempfile.TemporaryDirectory(prefix="neurok-bench-serve-") as tmp,
        model_uri(args.model, Path(tmp)) as uri,
    ):
        service = load_service(uri, Limits(max_vertices=20_000, max_frames=600))
        seconds = time_simulations(service)
        with serving(service) as server:
            if not args.clients_only:
                renderer, columns = playground(server, seconds, args, Path(tmp))
            under_load = load_test(server, service, args)
    load_now = os.getloadavg()[0]
    about = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (load {load_now:.1f}), "
        f"{args.threads} server thread(s)",
        "model": uri if args.model else "tiny model trained here",
    }
    if not args.clients_only:
        results = {
            **about,
            "browser": f"{CHROMIUM} (headless), WebGL: {renderer}",
            "frames": args.frames + 1,
            "pokes": args.pokes,
            "columns": columns,
        }
        write_results("serve", results, markdown(results))
    results = {**about, "frames": args.frames + 1, "format": args.format, **under_load}
    write_results("serve_load", results, load_markdown(results))


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} (min {min(values):.0f}, max {max(values):.0f})"


def drawn(column: dict) -> str:
    d, s = column["drawn"], column["skipped"]
    return f"{min(d)}-{max(d)} / {min(s)}-{max(s)}"


def markdown(results: dict) -> str:
    rows = [
        ("poke -> first frame drawn, warm cache (ms)", lambda c: spread(c["latency_ms"])),
        ("  of which the server's simulate (ms)", lambda c: spread(c["server_ms"])),
        ("playback frames/s (the rollout's rate: 30)", lambda c: spread(c["fps"])),
        ("frames drawn / skipped per rollout (range)", drawn),
        ("JS per drawn frame: normals, upload, render (ms)", lambda c: f"{c['draw_ms_median']:.1f}"),
        ("mesh load and prepare (s; cold except the last column)", lambda c: f"{c['prepare_s']:.1f}"),
    ]
    columns = results["columns"]
    head = [f"{c['vertices']} vertices, MSAA {'on' if c['antialias'] else 'off'}" for c in columns]
    lines = [
        f"# neurok serve playground ({results['machine']})",
        "",
        f"{results['browser']}; {results['model']}; {results['frames']} frames per rollout, "
        f"{results['pokes']} pokes per column, median (min, max).",
        "",
        "| | " + " | ".join(head) + " |",
        "|---" * (len(columns) + 1) + "|",
        *("| " + " | ".join([name, *(cell(c) for c in columns)]) + " |" for name, cell in rows),
    ]
    return "\n".join(lines) + "\n"


def load_markdown(results: dict) -> str:
    runs, refusals = results["runs"], results["refusals"]
    keys = ("clients", "requests", "errors", "p50_ms", "p95_ms", "max_ms", "requests_per_s")
    lines = [
        f"# neurok serve under load ({results['machine']})",
        "",
        f"{results['model']}; POST /simulate?format={results['format']}: a poke on an icosphere of "
        f"{results['vertices']} vertices, {results['frames']} frames ({results['answer_bytes'] / 1e6:.1f} MB "
        f"answered), its prepared mesh cached ({results['cache_misses_under_load']} misses during the runs). "
        f"Each client sends {runs[0]['requests']} requests one after another; latency is from sending a "
        "request to reading its answer; an error is any answer but 200.",
        "",
        "| clients | requests | errors | p50 (ms) | p95 (ms) | max (ms) | requests/s |",
        "|---" * len(keys) + "|",
        *("| " + " | ".join(str(run[key]) for key in keys) + " |" for run in runs),
        "",
        f"Malformed requests, one of each kind, sent while {runs[-1]['clients']} clients loaded the server "
        f"(all answered before the load ended: {'yes' if results['refused_while_loaded'] else 'no'}): "
        f"{sum(r['ok'] for r in refusals)} of {len(refusals)} got the 4xx due, naming the field.",
        "",
        "| request | status (due) | field | ms |",
        "|---|---|---|---|",
        *(
            f"| {r['request']} | {r['status']} ({r['due']}) | {r['field']} | {r['ms']:.0f} |"
            for r in refusals
        ),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
