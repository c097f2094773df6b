"""A real daemon killed (SIGKILL) while its webhook sink is down: after a restart every alert arrives exactly
once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_notify_delivery import Received, ThreadedReceiver

pytestmark = pytest.mark.slow


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def outbox(db: Path) -> list[tuple[int, str, str]]:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select id, sink, status from alert_outbox order by id").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []


def start(cfg: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
    )


def test_kill_with_alerts_pending_then_restart_delivers_each_exactly_once(sim, tmp_path: Path) -> None:
    import os

    secrets = {f"k{i}": unique_secret() for i in range(3)}
    for s in secrets.values():
        sim.set_key(s, provider="openai", behaviour="invalid")
    sink_down = {"on": True}

    def respond(r: Received) -> tuple[int, dict[str, str], str]:
        return (503, {}, "down for maintenance") if sink_down["on"] else (200, {}, "ok")

    with ThreadedReceiver(respond) as rx:
        keys = [
            {
                "name": n,
                "provider": "openai",
                "secret": f"env:KW_{n.upper()}",
                "base_url": f"{sim.url}/openai/v1",
            }
            for n in secrets
        ]
        extra = (
            # An invalid key alerts at its first probe (no thresholds): this test is about delivery.
            '\n[[policies]]\nname = "page-on-invalid"\nwhen = { health = "invalid" }\n'
            'actions = [{ type = "alert", severity = "critical" }]\n'
            '\n[alerts]\ngroup_wait = "0s"\nretry_base = "200ms"\nretry_max = "400ms"\n'
            '[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
        )
        db = tmp_path / "k.db"
        cfg = tmp_path / "keywatch.toml"
        cfg.write_text(
            toml_config(keys, db=db, listen=f"127.0.0.1:{free_port()}", interval="1h", extra=extra)
        )
        env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        env.update({f"KW_{n.upper()}": s for n, s in secrets.items()})
        env.update(KW_HOOK=rx.url("/hook"), KW_HMAC="hmac-secret-0123456789")
        log = tmp_path / "daemon.log"

        first = start(cfg, env, log)
        try:
            wait_for(lambda: len(outbox(db)) == 3, "three alerts in the outbox")
            wait_for(lambda: len(rx.requests) >= 3, "delivery attempts against the down sink")
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        assert rx.accepted() == []
        assert [status for _, _, status in outbox(db)] == ["pending"] * 3

        sink_down["on"] = False
        second = start(cfg, env, log)
        try:
            wait_for(lambda: [s for _, _, s in outbox(db)] == ["delivered"] * 3, "delivery after the restart")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()
        delivered = rx.accepted()
        hook_url = rx.url("/hook")

    identities = [r.json()["alerts"][0]["identity"] for r in delivered]
    assert sorted(identities) == ["key_health:k0", "key_health:k1", "key_health:k2"]  # each exactly once
    assert len({r.headers["webhook-id"] for r in delivered}) == 3
    assert len(outbox(db)) == 3  # the restart re-decided nothing: no second round of alerts
    text = log.read_text()
    assert all(s not in text for s in secrets.values()) and "hmac-secret-0123456789" not in text
    assert hook_url not in text and "alert_delivery_failed" in text
