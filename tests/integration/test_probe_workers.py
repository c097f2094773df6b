"""probe.workers > 1: keys spread over worker processes, results identical to in-process probing, and a
worker that dies costs no key its health."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from keywatch.daemon import Daemon
from tests.integration.conftest import toml_config, unique_secret

pytestmark = pytest.mark.slow

BEHAVIOURS = ["healthy", "invalid", "rate_limited", "server_error", "missing_scope"] * 4
EXPECTED = {"healthy": "healthy", "invalid": "invalid", "rate_limited": "rate_limited",
            "server_error": "provider_error", "missing_scope": "forbidden"}


def fleet(sim, monkeypatch) -> list[dict]:
    keys = []
    for i, behaviour in enumerate(BEHAVIOURS):
        secret = unique_secret()
        sim.set_key(secret, provider="openai", behaviour=behaviour)
        monkeypatch.setenv(f"KW_W{i}", secret)
        keys.append({"name": f"k{i:02d}-{behaviour}", "provider": "openai", "secret": f"env:KW_W{i}",
                     "base_url": f"{sim.url}/openai/v1"})
    return keys


async def test_workers_probe_every_key_like_the_daemon_itself(sim, tmp_path: Path, monkeypatch) -> None:
    keys = fleet(sim, monkeypatch)
    cfg = tmp_path / "k.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", interval="1h", extra="")
                   .replace("jitter = 0", "jitter = 0\nworkers = 3"))
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        daemon.scheduler.pause()
        report = await daemon.cycle()
        assert len(report.probed) == len(keys)
        got = {st.key: str(st.health) for st in report.seen(daemon.tracker.snapshot())}
        assert got == {k["name"]: EXPECTED[k["name"].split("-", 1)[1]] for k in keys}
        pids = [w.process.pid for w in daemon._prober._workers if w is not None]
        assert len(set(pids)) == 3 and os.getpid() not in pids

        # A worker dies between cycles: the next cycle replaces it and every key is probed again.
        os.kill(pids[0], signal.SIGKILL)
        daemon._prober._workers[0].process.join(5)
        report = await daemon.cycle()
        assert sorted(report.probed) == sorted(got)
        assert {st.key: str(st.health) for st in report.seen(daemon.tracker.snapshot())} == got
        assert pids[0] not in [w.process.pid for w in daemon._prober._workers if w is not None]
    finally:
        daemon.request_stop()
        await daemon.shutdown()
    assert all(w is None for w in daemon._prober._workers) if daemon._prober else True


async def test_a_worker_dying_mid_cycle_is_provider_error_never_a_verdict(sim, tmp_path: Path, monkeypatch) -> None:
    keys = fleet(sim, monkeypatch)
    slow = unique_secret()
    sim.set_key(slow, provider="openai", behaviour="healthy", latency_ms=3000)
    monkeypatch.setenv("KW_SLOW", slow)
    keys.append({"name": "slow", "provider": "openai", "secret": "env:KW_SLOW", "base_url": f"{sim.url}/openai/v1"})
    cfg = tmp_path / "k.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", interval="1h", timeout="10s", extra="")
                   .replace("jitter = 0", "jitter = 0\nworkers = 2"))
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        daemon.scheduler.pause()
        await daemon.cycle()  # workers up
        prober = daemon._prober
        owner = prober.partition(["slow"]).index(["slow"])
        import asyncio

        cycle = asyncio.create_task(daemon.cycle())
        await asyncio.sleep(1.0)  # the slow key's probe is in flight in its worker
        os.kill(prober._workers[owner].process.pid, signal.SIGKILL)
        report = await cycle
        slow_result = daemon.tracker.snapshot()["slow"]
        assert "slow" in report.probed
        assert str(slow_result.health) == "provider_error" and slow_result.error_code == "probe_worker_died"
        assert len(report.probed) == len(keys)
        assert daemon.tracker.snapshot()["slow"].health.blames_key is False
    finally:
        daemon.request_stop()
        await daemon.shutdown()


def test_sigterm_stops_the_workers_with_the_daemon(sim, tmp_path: Path, monkeypatch) -> None:
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.integration.conftest import free_port

    keys = fleet(sim, monkeypatch)
    port = free_port()
    cfg = tmp_path / "k.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1h", extra="")
                   .replace("jitter = 0", "jitter = 0\nworkers = 2"))
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) >= 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    time.sleep(0.5)
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
