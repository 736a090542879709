"""A real browser for tests: headless Chromium driven over WebDriver (W3C, JSON over
HTTP to chromedriver), with the standard library only.

Debian packages chromium and chromium-driver (scripts/test installs them). The machine's
network is closed: without the flags below Chromium stalls on background requests.
chromedriver and every Chromium process are registered with tests.support.leaks.
"""
from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from tests.support import leaks
from tests.support.nodes import free_port

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1100"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def available() -> bool:
    return chromium() is not None and shutil.which("chromedriver") is not None


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = leaks.children_of(todo.pop())
        out += kids
        todo += kids
    return out


class Browser:
    def __init__(self, folder: pathlib.Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / "chromedriver.log", "ab")
        self.driver = subprocess.Popen(
            ["chromedriver", f"--port={self.port}"], stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        leaks.register(self.driver.pid)
        self.session = ""
        try:
            self._wait_driver()
            caps = {"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "pageLoadStrategy": "normal",
                "goog:chromeOptions": {"binary": chromium(), "args": CHROMIUM_FLAGS + [
                    f"--user-data-dir={folder / 'profile'}"]}}}}
            self.session = self._call("POST", "/session", caps, timeout=90)["sessionId"]
            for pid in descendants(self.driver.pid):
                leaks.register(pid)
        except BaseException:
            self.close()
            raise

    def _wait_driver(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self._call("GET", "/status", timeout=2).get("ready"):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("chromedriver did not start")

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                reply = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"webdriver {method} {path}: {exc.read()[:500]!r}") from None
        return reply.get("value", reply)

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url}, timeout=60)

    def run(self, script: str, *args: Any) -> Any:
        """Run JavaScript in the page (a function body: `return ...`)."""
        return self._call("POST", f"/session/{self.session}/execute/sync",
                          {"script": script, "args": list(args)})

    def wait(self, script: str, timeout: float = 30, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.run(script)
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting in the page for {what} (last: {last!r})")

    def screenshot(self, path: pathlib.Path) -> pathlib.Path:
        png = self._call("GET", f"/session/{self.session}/screenshot")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(png))
        return path

    def close(self) -> None:
        for pid in descendants(self.driver.pid):
            leaks.register(pid)
        if self.session:
            try:
                self._call("DELETE", f"/session/{self.session}", timeout=30)
            except (OSError, RuntimeError):
                pass
            self.session = ""
        if self.driver.poll() is None:
            self.driver.terminate()
            try:
                self.driver.wait(10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
                self.driver.wait(5)
        self.log.close()


def artifacts_dir() -> pathlib.Path:
    """Where tests keep what a person should look at (screenshots): $FASTCLUSTER_TEST_
    ARTIFACTS, else test-artifacts/ at the top of the repository."""
    default = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts"
    return pathlib.Path(os.environ.get("FASTCLUSTER_TEST_ARTIFACTS", default))
