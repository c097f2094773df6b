"""keywatch under systemd: the unit's restart and resource settings, and the notify protocol spoken over a
real unix datagram socket as NOTIFY_SOCKET (READY, RELOADING with MONOTONIC_USEC, WATCHDOG only while the
scheduler makes progress)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import pytest

from keywatch.daemon import Daemon
from keywatch.settings.schema import ProbeSettings
from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_daemon import DaemonProc, base_env, read_notifications
from tests.integration.test_ops import unit_values


def test_a_config_error_is_not_restarted_forever():
    assert unit_values("Restart") == ["on-failure"]
    assert unit_values("RestartPreventExitStatus") == ["2"]
    from keywatch.cli.common import EXIT_CODES, EXIT_USAGE

    assert EXIT_USAGE == 2 and "config" in EXIT_CODES[2]


def test_limit_nofile_covers_the_largest_connection_pool():
    (limit,) = unit_values("LimitNOFILE")
    most = next(m.le for m in ProbeSettings.model_fields["concurrency"].metadata if hasattr(m, "le"))
    assert int(limit.split(":")[0]) >= most + 1024  # the pool, plus the database, listen socket, workers, logs


def notifications_until(sock: socket.socket, predicate, timeout: float = 20.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got += read_notifications(sock)
        if predicate(got):
            return got
    raise AssertionError(f"timed out; notifications: {got}")


@pytest.mark.slow
def test_reload_is_reported_with_reloading_monotonic_usec_then_ready(sim, tmp_path: Path, notify_socket) -> None:
    sock_path, sock = notify_socket
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="healthy")
    port = free_port()
    keys = [{"name": "alpha", "provider": "openai", "secret": "env:KW_A", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1h"))
    d = DaemonProc(cfg, base_env(KW_A=secret, NOTIFY_SOCKET=str(sock_path)), port)
    try:
        notifications_until(sock, lambda got: any(m.startswith("READY=1") for m in got))
        for change in ('interval = "1h"', 'interval = "soon"'):  # applied, then refused: both end in READY=1
            cfg.write_text(cfg.read_text().replace('interval = "1h"', change))
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            d.proc.send_signal(signal.SIGHUP)
            got = notifications_until(sock, lambda got: any(m.startswith("READY=1") for m in got))
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            reloading = [i for i, m in enumerate(got) if m.startswith("RELOADING=1")]
            ready = [i for i, m in enumerate(got) if m.startswith("READY=1")]
            assert len(reloading) == 1 and len(ready) == 1 and reloading[0] < ready[0], got
            fields = dict(line.split("=", 1) for line in got[reloading[0]].splitlines())
            assert before <= int(fields["MONOTONIC_USEC"]) <= after, (before, fields, after)
        assert "reload_refused" in d.logs()
        assert d.proc.poll() is None
    finally:
        code = d.stop()
    assert code == 0, d.logs()


def test_watchdog_is_pinged_only_while_the_scheduler_makes_progress(tmp_path: Path, notify_socket,
                                                                    monkeypatch) -> None:
    sock_path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(tmp_path / "unused.toml")

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        task = asyncio.create_task(daemon._watchdog())
        await asyncio.sleep(0.4)
        healthy = read_notifications(sock)
        daemon._progress_at = time.monotonic() - daemon.stall_limit() - 1  # no cycle began, no result came
        await asyncio.sleep(0.1)
        read_notifications(sock)  # a ping that was already on its way
        await asyncio.sleep(0.4)
        stuck = read_notifications(sock)
        daemon._progress()  # a cycle starts again
        await asyncio.sleep(0.4)
        again = read_notifications(sock)
        task.cancel()
        return healthy, stuck, again

    healthy, stuck, again = asyncio.run(scenario())
    assert healthy.count("WATCHDOG=1") >= 3, healthy
    assert stuck == [], stuck  # systemd's WatchdogSec runs out: the service is killed and restarted
    assert again.count("WATCHDOG=1") >= 3, again
    assert daemon.making_progress()


def test_stall_limit_leaves_room_for_the_interval_and_a_slow_probe(tmp_path: Path) -> None:
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config([], db=tmp_path / "k.db", interval="5m", timeout="10s"))
    daemon = Daemon(cfg)
    daemon.inventory = daemon.load()
    assert daemon.stall_limit() == 300 + 20 + 60  # jitter 0 in this config
    daemon._progress_at = time.monotonic() - 200
    assert daemon.making_progress()
    daemon._progress_at = time.monotonic() - 400
    assert not daemon.making_progress()
