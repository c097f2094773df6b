"""The daemon (`keywatch run`) rotates a key on its timer while a client takes the key from the daemon's
Redis pool before every request: the client sees no failed request before, during or after the rotation
(the old key deleted), the pool ends with the new key only, and one credential is left at the provider: the
one in the pool and the destination. (That the pool switches at promote itself, before any cycle, is shown
in test_rotation_consumers.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import httpx2

from keywatch.domain import Account, ManagedKey, Secret
from keywatch.providers.openrouter import OpenRouterAdapter
from tests.faults.support import wait_for

from .conftest import free_port
from .test_pools import _redis

MANAGEMENT = "sk-or-v1-" + "7a" * 32
OLD = "sk-or-v1-" + "8b" * 32


def test_a_client_of_the_daemons_redis_pool_sees_no_failed_request_during_a_rotation(sim, tmp_path: Path) -> None:
    redis = _redis()
    pool_key = f"kwtest:{uuid.uuid4().hex}:routers"
    sim.set_key(MANAGEMENT, "openrouter", "admin")
    sim.set_key(OLD, "openrouter", hash="h_pool_old", name="pool-router", limit=10)
    base = f"{sim.url}/openrouter/api/v1"
    dest = tmp_path / "router.key"
    dest.write_text(OLD + "\n")
    db = tmp_path / "k.db"
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'''[daemon]
database = "sqlite:///{db}"
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
name = "pool-router"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{base}"
account = "or"
rotate_every = "1d"
publish = ["file:{dest}"]
grace = "3s"

[[pools]]
name = "routers"
keys = ["pool-router"]
redis = {{ url = "redis://127.0.0.1:6379/0", key = "{pool_key}" }}

[rotation]
check_interval = "1s"
verify_interval = "100ms"
allow_destructive = true
''')
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env["KW_OR_ADMIN"] = MANAGEMENT
    sent, failures, seen = 0, [], set()
    stop = threading.Event()

    def client() -> None:  # an application: SRANDMEMBER before every request
        nonlocal sent
        while not stop.is_set():
            value = redis.srandmember(pool_key)
            if value is None:
                stop.wait(0.02)
                continue
            seen.add(value)
            req = urllib.request.Request(f"{base}/key", headers={"Authorization": f"Bearer {value}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            sent += 1
            if status != 200:
                failures.append(status)
            stop.wait(0.01)

    def rotations() -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "keywatch", "rotations", "--json", "-c", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    stderr = tmp_path / "daemon.err"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("w"),
    )
    thread = threading.Thread(target=client)
    try:
        wait_for(lambda: redis.smembers(pool_key) == {OLD}, "the pool published with the key", timeout=60)
        thread.start()
        wait_for(lambda: [r["state"] for r in rotations()] == ["done"], "the rotation done", timeout=90)
        wait_for(lambda: redis.smembers(pool_key) == {dest.read_text().strip()}, "the pool at the new key")
        stop.wait(1.5)  # more cycles after the old key is gone
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
        redis.delete(pool_key)
    assert code == 0, stderr.read_text()[-3000:]
    new = dest.read_text().strip()
    assert new != OLD and seen == {OLD, new}
    assert sent > 50 and failures == [], failures[:5]

    async def left() -> list[str]:
        account = Account("or", "openrouter", admin_secret=Secret(MANAGEMENT), base_url=base)
        async with httpx2.AsyncClient() as http:
            adapter = OpenRouterAdapter(http, {"or": account}, timeout=5)
            key = ManagedKey("pool-router", "openrouter", Secret(new), "x", base_url=base, account="or")
            return [c.name for c in await adapter.list_credentials(key) if c.name and "pool-router" in c.name]

    (name,) = asyncio.run(left())
    assert name.startswith("pool-router-rot-")
