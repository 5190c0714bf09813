"""A headless Chromium driven over the DevTools protocol, for tests of report.html.

The protocol runs over ``--remote-debugging-pipe``: Chromium reads commands from its
file descriptor 3 and writes answers and events to 4, each a JSON message ended by a
NUL byte. That needs no client package (no websockets, no Selenium or Playwright), only
the system's Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The path of an installed Chromium or Chrome (``$TRAJREG_CHROMIUM`` first)."""
    named = os.environ.get("TRAJREG_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((p for p in map(shutil.which, BINARIES) if p), None)


# exec argv[3:] with argv[1] as descriptor 3 and argv[2] as 4
SHIM = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 3); "
        "os.dup2(w, 4); os.close(r); os.close(w); os.execv(sys.argv[3], sys.argv[3:])")


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless browser with one page; ``with Chromium(path) as page: ...``."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900,
                 timeout: float = 30.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self._profile = tempfile.TemporaryDirectory(prefix="trajreg-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # the browser's ends at 10 or above, then moved to 3 and 4 by a Python shim
        # between fork and exec (no preexec_fn: unsafe in a parent with threads, as
        # torch's; no shell: dash takes single-digit descriptors only)
        r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)
        # its log in a file: a pipe nobody reads could fill and stop the browser
        self._log_path = Path(self._profile.name) / "chromium.log"
        try:
            with open(self._log_path, "wb") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", SHIM, str(r), str(w), binary,
                     "--headless", "--remote-debugging-pipe",
                     # a container has no user namespaces for the sandbox (and root
                     # refuses it); the page is one the test wrote, with no script
                     "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--no-first-run", "--disable-extensions", "--mute-audio",
                     f"--window-size={width},{height}",
                     f"--user-data-dir={self._profile.name}", "about:blank"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(r, w))
        finally:
            os.close(r)
            os.close(w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def __enter__(self) -> Chromium:
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            self.send("Page.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height,
                       "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("Browser.close", session=False)
                self._proc.wait(timeout=10)
            except (BrowserError, OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    # ------------------------------------------------------------------ the protocol

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: bool = True) -> dict[str, Any]:
        """Send one command (to the page's session unless ``session`` is false) and
        return its result; events that arrive meanwhile go to ``self.events``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The first event ``method`` received (now or already)."""
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._receive())

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise BrowserError(f"no answer from Chromium in {self.timeout:g} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                log = self._log_path.read_text(errors="replace")[-2000:]
                raise BrowserError(f"Chromium closed the pipe; its log ends: {log}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # ------------------------------------------------------------------ page actions

    def load(self, path: Path) -> None:
        """Open a local file and wait until it and its images have loaded."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        result = self.send("Page.navigate", {"url": Path(path).resolve().as_uri()})
        if result.get("errorText"):
            raise BrowserError(f"navigating to {path}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page (all of it, or the window), at the window's width."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": self.width, "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


# the page's layout at its window's width: what a reader would have to scroll sideways
LAYOUT = """(() => {
  const root = document.documentElement;
  return {body: document.body.scrollWidth, page: root.scrollWidth,
          inner: window.innerWidth, client: root.clientWidth,
          images: document.images.length,
          broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
            .map(i => i.alt),
          // each comparison's deciding table must fit without scrolling its box
          decidingScrolls: [...document.querySelectorAll('table.deciding')]
            .filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth).length,
          // elements sticking out of the page's width, outside a scrolling box
          sticking: [...document.body.querySelectorAll('*')]
            .filter(e => !e.closest('.scroll')
                         && e.getBoundingClientRect().right > root.clientWidth)
            .map(e => e.tagName.toLowerCase() + ': ' + e.textContent.slice(0, 60))};
})()"""


def layout_problems(page: Chromium) -> list[str]:
    """What is wrong with the loaded page's layout ([] if nothing): a body wider than
    the window, a page that scrolls sideways, images that did not load."""
    m = page.evaluate(LAYOUT)
    sizes = {k: m[k] for k in ("body", "page", "inner", "client")}
    problems = []
    if m["body"] > m["inner"]:
        problems.append(f"the body is wider than the window: {sizes}")
    if m["page"] > m["client"]:
        problems.append(f"the page scrolls sideways: {sizes}")
    if m["sticking"]:
        problems.append(f"elements outside the window: {m['sticking'][:5]}")
    if m["broken"]:
        problems.append(f"images that did not load: {m['broken']}")
    if m["decidingScrolls"]:
        problems.append(f"{m['decidingScrolls']} deciding tables scroll sideways")
    return problems
