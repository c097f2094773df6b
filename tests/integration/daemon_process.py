"""A keywatch daemon run as a process (`python -m keywatch run -c CONFIG`), and its /readyz: for the tests
that start daemons themselves (clusters, kill -9, containment across instances)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def wait_until(cond: Callable[[], object], what: str, timeout: float = 30.0, step: float = 0.05) -> float:
    """Seconds it took; fails naming `what` after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def readyz(port: int) -> dict:
    """The daemon's /readyz body (503 included); {} when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except OSError:
        return {}


@dataclass
class DaemonProcess:
    name: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keywatch", "run", "-c", str(self.config)],
            env=env,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        return self.alive and bool(readyz(self.port).get("ready"))

    def status(self) -> dict:
        """The cluster part of /readyz."""
        return readyz(self.port).get("cluster") or {}

    def leading(self) -> bool:
        return self.alive and bool(self.status().get("leader"))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        """SIGTERM (after SIGCONT, for one a test froze), then its exit status; killed after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
