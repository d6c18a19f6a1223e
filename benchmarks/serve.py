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

Usage: python benchmarks/serve.py [--model URI] [--frames 60] [--pokes 5] [--threads 1]
                                  [--screenshot docs/playground.png]
Without --model, a tiny model is trained and registered in a temporary store (tests/conftest.py's).
Writes benchmarks/results/serve.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="models:/NAME@ALIAS; default: a tiny model trained here")
    parser.add_argument("--frames", type=int, default=60, help="frames per rollout (30 fps: 60 is 2 s)")
    parser.add_argument("--pokes", type=int, default=5, help="pokes per measure")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads of the server")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "playground.png")
    args = parser.parse_args()
    from browser import CHROMIUM, Browser

    if CHROMIUM is None:
        sys.exit("serve.py: chromium not installed")
    os.chdir(ROOT)  # the tiny model's configs are read by relative path
    limit_threads(args.threads)
    with (
        tempfile.TemporaryDirectory(prefix="neurok-bench-serve-") as tmp,
        model_uri(args.model, Path(tmp)) as uri,
    ):
        service = load_service(uri, Limits(max_vertices=20_000, max_frames=600))
        seconds = time_simulations(service)
        with serving(service) as server, Browser(Path(tmp) / "chromium", 1000, 640) as page:
            open_page(page, f"{server.url}/", args.frames)
            renderer = page.evaluate("playground.glRenderer")
            columns = [measure(page, level, args.pokes, seconds) for level in (LATENCY_MESH, PLAYBACK_MESH)]
            open_page(page, f"{server.url}/?antialias=on", args.frames)  # what a GPU's page draws
            columns.append(measure(page, PLAYBACK_MESH, args.pokes, seconds))
            load(page, LATENCY_MESH)
            poke(page, 0)
            page.screenshot(args.screenshot)
            assert page.errors() == [], page.errors()
    load_now = os.getloadavg()[0]
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (load {load_now:.1f}), "
        f"{args.threads} server thread(s)",
        "browser": f"{CHROMIUM} (headless), WebGL: {renderer}",
        "model": uri if args.model else "tiny model trained here",
        "frames": args.frames + 1,
        "pokes": args.pokes,
        "columns": columns,
    }
    write_results("serve", results, markdown(results))


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


if __name__ == "__main__":
    main()
