"""A real daemon killed (exit 137, as kill -9) right after each rotation step: after a restart the rotation
completes or rolls back, the value the destination publishes works at every moment, and the provider is
left with exactly one credential."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from keywatch.sim.server import SimulatorThread
from tests.faults.support import wait_for
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

MANAGEMENT = "sk-or-v1-" + "9a" * 32


def config(tmp_path: Path, base: str, dest: Path, *, rotate: bool) -> str:
    return f'''[daemon]
database = "sqlite:///{tmp_path / 'k.db'}"
listen = "127.0.0.1:{free_port()}"

[probe]
interval = "1s"
jitter = 0

[[accounts]]
name = "or"
provider = "openrouter"
admin_secret = "env:KW_OR_ADMIN"
base_url = "{base}"

[[keys]]
name = "router"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{base}"
account = "or"
publish = ["file:{dest}"]
grace = "1s"
{'rotate_every = "1s"' if rotate else ''}

[rotation]
check_interval = "1s"
verify_interval = "100ms"
allow_destructive = true
'''


def rows(tmp_path: Path, env: dict[str, str], cfg: Path) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "keywatch", "rotations", "--json", "-c", str(cfg)], env=env,
                         capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []


class Client(threading.Thread):
    """Reads the key from the destination before each request; counts failures."""

    def __init__(self, url: str, dest: Path) -> None:
        super().__init__(daemon=True)
        self.url, self.dest = url, dest
        self.sent = self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            value = self.dest.read_text().strip()
            req = urllib.request.Request(f"{self.url}/key", headers={"Authorization": f"Bearer {value}"})
            try:
                with urllib.request.urlopen(req, timeout=5):
                    pass
            except urllib.error.HTTPError:
                self.failed += 1
            except OSError:
                pass
            self.sent += 1
            time.sleep(0.01)


@pytest.mark.parametrize("step", ["create", "publish_pending", "verify", "promote", "grace", "retire_old"])
def test_kill9_after_each_step_completes_or_rolls_back(tmp_path: Path, step: str, figure) -> None:
    with SimulatorThread() as sim:
        scenario(sim, tmp_path, step, figure)


def scenario(sim: SimulatorThread, tmp_path: Path, step: str, figure) -> None:
    old = "sk-or-v1-" + "7b" * 32
    sim.set_key(MANAGEMENT, "openrouter", "admin")
    sim.set_key(old, "openrouter", hash=f"h_{step}", name=f"router-{step}", limit=5)
    base = f"{sim.url}/openrouter/api/v1"
    dest = tmp_path / "router.key"
    dest.write_text(old + "\n")
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(config(tmp_path, base, dest, rotate=True))
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env["KW_OR_ADMIN"] = MANAGEMENT
    log = tmp_path / "daemon.log"
    client = Client(base, dest)
    client.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
                                env={**env, "KEYWATCH_FAULT_AFTER_STEP": step},
                                stdout=log.open("a"), stderr=subprocess.STDOUT)
        try:
            assert proc.wait(90) == 137  # died right after recording `step`
        finally:
            if proc.poll() is None:
                proc.kill()
        cfg.write_text(config(tmp_path, base, dest, rotate=False))  # the timer starts nothing more
        proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                stdout=log.open("a"), stderr=subprocess.STDOUT)
        try:
            final = wait_for(lambda: [r for r in rows(tmp_path, env, cfg) if r["state"] in ("done", "rolled_back")],
                             f"the rotation interrupted after {step} to finish", timeout=90)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        client.stop.set()
        client.join(10)
    r = final[0]
    assert r["state"] == ("rolled_back" if step == "create" else "done"), r
    published = dest.read_text().strip()
    assert client.sent > 20 and client.failed == 0
    listed = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{base}/keys?include_disabled=true", headers={"Authorization": f"Bearer {MANAGEMENT}"}), timeout=5).read())
    mine = listed["data"]  # every managed key of the account (the management key is not one)
    assert len(mine) == 1, mine  # no extra key left, none lost
    if r["state"] == "rolled_back":
        assert published == old
    text = log.read_text() + json.dumps(final)
    assert old not in text and published not in text
    figure(f"rotation kill -9 after {step}", f"{r['state']}, {client.sent} client requests, 0 failed, 1 key left")
