"""The HTTP server (the standard library's ThreadingHTTPServer): one thread per connection, one simulation
at a time (SimulationService), 127.0.0.1 unless told otherwise.

    GET  /           the browser playground (playground.py; also /playground): 503 if three.js is not built
    GET  /health     200 {"status": "ok"}
    GET  /version    200 {"neurok": version, "model_uri", "registered_name", "registered_version",
                          "run_id", "model_id", "dataset_content_hash"}
    POST /simulate   a rollout (protocol.py: the request, the answer, the refusals); ?format=frames writes
                     it one frame at a time, which the playground plays as it arrives

Another path is 404, another method 405; every refusal has a JSON body {"error", "field"} and no
traceback (an unexpected failure is logged here and answered 500 "internal error").
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from neurok.errors import BadInputError, NeurokError
from neurok.serve.playground import PlaygroundMissing, playground_page
from neurok.serve.protocol import (
    ANSWER_TYPES,
    JSON_TYPE,
    RequestError,
    frames_answer,
    json_answer,
    npz_answer,
    read_call,
)
from neurok.serve.service import SimulationService

log = logging.getLogger(__name__)

ROUTES = {"/": "GET", "/playground": "GET", "/health": "GET", "/version": "GET", "/simulate": "POST"}
HTML_TYPE = "text/html; charset=utf-8"


class SimulationServer(ThreadingHTTPServer):
    daemon_threads = True  # a connection left open does not hold up the shutdown

    def __init__(self, service: SimulationService, host: str = "127.0.0.1", port: int = 8765):
        super().__init__((host, port), SimulationHandler)
        self.service = service

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class SimulationHandler(BaseHTTPRequestHandler):
    server: SimulationServer

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_PUT(self) -> None:
        self.route("PUT")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_PATCH(self) -> None:
        self.route("PATCH")

    def route(self, method: str) -> None:
        path = urlsplit(self.path).path
        if path not in ROUTES:
            self.send_json(404, {"error": f"{path}: no such path ({', '.join(ROUTES)})", "field": "path"})
        elif ROUTES[path] != method:
            allowed = ROUTES[path]
            message = f"{method} {path}: use {allowed}"
            self.send_json(405, {"error": message, "field": "method"}, {"Allow": allowed})
        elif path in ("/", "/playground"):
            self.send_playground()
        elif path == "/health":
            self.send_json(200, {"status": "ok"})
        elif path == "/version":
            self.send_json(200, self.server.service.identity)
        else:
            self.simulate()

    def simulate(self) -> None:
        try:
            body = self.read_body()
            call = read_call(
                self.headers.get_content_type() if "Content-Type" in self.headers else "",
                body,
                urlsplit(self.path).query,
                self.headers.get("Accept", ""),
                self.server.service.limits.max_vertices,
            )
            out = self.server.service.simulate(call.model_input, call.params)
        except RequestError as exc:
            self.refuse(exc.status, str(exc), exc.field)
        except BadInputError as exc:
            self.refuse(422, str(exc), exc.field or "body")
        except NeurokError as exc:  # the simulation failed in a way the message explains
            self.refuse(500, str(exc), None)
        except Exception:
            log.exception("POST /simulate failed")
            self.refuse(500, "internal error (logged by the server)", None)
        else:
            if call.answer == "frames":
                self.send_frames(out)
            elif call.answer == "npz":
                self.send(200, npz_answer(out), ANSWER_TYPES["npz"])
            else:
                self.send(200, json_answer(out), JSON_TYPE)

    def send_playground(self) -> None:
        try:
            page = playground_page()
        except PlaygroundMissing as exc:
            self.refuse(503, str(exc), None)
        else:
            self.send(200, page, HTML_TYPE, {"Cache-Control": "no-cache"})

    def send_frames(self, out: dict) -> None:
        """The binary frames answer, written a frame at a time so the client can play the first ones
        while the rest arrive (the rollout itself is computed whole before the first byte)."""
        length, pieces = frames_answer(out)
        self.send_response(200)
        self.send_header("Content-Type", ANSWER_TYPES["frames"])
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            for piece in pieces:
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):  # the playground dropped it for a newer poke
            self.close_connection = True
            log.info("%s left before the rollout's last frame", self.address_string())

    def read_body(self) -> bytes:
        """The request's body, after checking its Content-Length against the service's limit."""
        length = self.headers.get("Content-Length")
        if length is None:
            raise RequestError(411, "Content-Length: required", "Content-Length")
        if not length.strip().isdigit():
            raise RequestError(
                400, f"Content-Length: a byte count expected, got {length!r}", "Content-Length"
            )
        limit = self.server.service.limits.max_body_bytes
        if int(length) > limit:
            raise RequestError(413, f"body: {length} bytes is more than max_body_bytes={limit}", "body")
        body = self.rfile.read(int(length))
        if len(body) < int(length):
            raise RequestError(400, f"body: {len(body)} of {length} bytes arrived", "body")
        return body

    def refuse(self, status: int, message: str, field: str | None) -> None:
        self.send_json(status, {"error": message, "field": field})

    def send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), JSON_TYPE, headers)

    def send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        self.send_json(code, {"error": message or HTTPStatus(code).phrase, "field": None})

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)
