"""`neurok serve --model URI [--host 127.0.0.1] [--port 8765] [--threads N] [--max-vertices N] ...`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from neurok.serve.limits import Limits

DEFAULTS = Limits()


def register(groups: argparse._SubParsersAction) -> None:
    parser = groups.add_parser(
        "serve",
        help="serve a registered model over HTTP: POST /simulate a mesh, get its rollout",
        description="Loads the simulator package as consumers do (mlflow.pyfunc; the tracking store is "
        "MLFLOW_TRACKING_URI, else outputs/mlflow.db) and answers GET /health, GET /version and POST "
        "/simulate (a JSON mesh with its conditions, or an OBJ/PLY/GLB file with them in the query). A mesh "
        "is prepared once (encoded, reduced, its surrogate fitted) and kept for the next requests on it. "
        "GET / is a browser playground: load a mesh, poke it, watch the rollout.",
    )
    parser.add_argument(
        "--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ or a folder"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch and BLAS threads; 0: the package's setting, else every core",
    )
    parser.add_argument(
        "--max-vertices", type=int, default=DEFAULTS.max_vertices, help="larger meshes get 422"
    )
    parser.add_argument("--max-frames", type=int, default=DEFAULTS.max_frames, help="longer rollouts get 422")
    parser.add_argument(
        "--max-body-mb", type=float, default=DEFAULTS.max_body_bytes / 2**20, help="larger bodies get 413"
    )
    parser.add_argument("--cache", type=int, default=4, help="prepared meshes kept (the last used)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import gc
    import signal

    import mlflow

    from neurok.errors import BadInputError
    from neurok.serve import playground
    from neurok.serve.server import SimulationServer
    from neurok.serve.service import load_service
    from neurok.threads import limit_threads
    from neurok.track import tracking_uri

    for name in ("max_vertices", "max_frames", "max_body_mb", "cache"):
        if getattr(args, name) < 1:
            raise BadInputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        raise BadInputError(f"--threads must be >= 0, got {args.threads}")
    limits = Limits(args.max_vertices, args.max_frames, int(args.max_body_mb * 2**20))
    mlflow.set_tracking_uri(tracking_uri("outputs"))
    service = load_service(args.model, limits, args.cache)
    # The loaded model's ~10^5 objects live as long as the server: kept out of full collections, they no
    # longer stall every request in flight (a 350-470 ms gen-2 pause, benchmarks/serve.py --clients-only)
    gc.freeze()
    threads = args.threads or service.package.cfg.threads
    if threads:
        limit_threads(threads)
    try:
        server = SimulationServer(service, args.host, args.port)
    except OSError as exc:
        raise BadInputError(f"--host {args.host} --port {args.port}: cannot listen there ({exc})") from None
    signal.signal(signal.SIGTERM, _interrupt)  # a container's stop: the same clean exit as Ctrl-C
    with server:
        print(f"serving {service.identity['model_uri']} on {server.url} (Ctrl-C stops)", flush=True)
        if playground.available():
            print(f"playground: open {server.url}/ in a browser", flush=True)
        else:
            print("playground: not built (`make three` vendors three.js; GET / answers 503)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    # The socket is closed and nothing is left to write: leave without the interpreter's finalisation,
    # in which a native library's teardown aborted the process after Ctrl-C (SIGABRT, no Python frame left:
    # 2 of 3 runs of tests/test_serve.py::test_cli_serves_and_stops_on_ctrl_c on 2026-12-08)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt
