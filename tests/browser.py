"""Headless Chromium driven over the DevTools protocol (one websocket): open a page, evaluate JavaScript,
click, collect console errors and uncaught exceptions, take a screenshot. The playground's test and
benchmark use it; tests/test_viewer.py needs only Chromium's --screenshot.

WebGL runs on SwiftShader (Chromium's software GL): no GPU is needed, and a headless Chromium no longer
falls back to it unless told to (--enable-unsafe-swiftshader).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--mute-audio", "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader", "--remote-debugging-port=0",
]  # fmt: skip


class PageError(AssertionError):
    """The page threw, or what it was asked did not happen in time."""


class Browser:
    """One headless Chromium showing one page; close() (or the with block) ends it."""

    def __init__(self, profile: Path, width: int = 1000, height: int = 640, start_timeout: float = 60):
        if CHROMIUM is None:
            raise RuntimeError("chromium not installed (.ci/run installs Debian's chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile / "chromium.log", "wb")  # noqa: SIM115 (closed in close())
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        self.process = subprocess.Popen([*command, "about:blank"], stdout=self.log, stderr=self.log)
        self.events: list[dict] = []
        self._next_id = 0
        try:
            self.socket = connect(page_socket(profile, self.process, start_timeout), max_size=None)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def send(self, method: str, timeout: float = 120, **params) -> dict:
        """The result of one protocol command; events that arrive meanwhile are kept in self.events."""
        self._next_id += 1
        self.socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise PageError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def open(self, url: str, timeout: float = 60) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout)

    def evaluate(self, expression: str, timeout: float = 120):
        """The expression's value (a promise awaited), as JSON; an exception it throws as a PageError.
        Keep the value small: a large typed array is serialised key by key, stalling the page."""
        result = self.send(
            "Runtime.evaluate", timeout, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise PageError(f"{expression}: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, every: float = 0.05, errors_end_it: bool = True):
        """The expression's first truthy value, polled; a PageError after `timeout` s, or as soon as the
        page has an error unless `errors_end_it` is false (a test that expects one)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if errors_end_it and self.errors():
                raise PageError(f"while waiting for {expression}: {self.errors()}")
            if time.monotonic() > deadline:
                raise PageError(f"{expression} still {value!r} after {timeout} s")
            time.sleep(every)

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries (a failed load) so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
        return found

    def forget_errors(self) -> None:
        """Drop the events seen so far, after a test has checked the errors it expected."""
        self.events.clear()

    def requests(self) -> list[str]:
        """The URL of every request the page made so far."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def click(self, x: float, y: float) -> None:
        """A left click at CSS pixel (x, y) of the viewport: the page sees pointerdown and pointerup."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 5) -> None:
        """A left-button drag from `start` to `end` (CSS pixels), through `steps` moves."""
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=start[0], y=start[1], button="left")
        for k in range(1, steps + 1):
            x, y = (a + (b - a) * k / steps for a, b in zip(start, end, strict=True))
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=end[0], y=end[1], button="left")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


def page_socket(profile: Path, process: subprocess.Popen, timeout: float) -> str:
    """The websocket URL of the started browser's first page. With --remote-debugging-port=0 Chromium
    picks a free port and writes it to DevToolsActivePort in its profile."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}: see {profile / 'chromium.log'}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"chromium did not open its DevTools port in {timeout} s")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as answer:
        targets = json.load(answer)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
