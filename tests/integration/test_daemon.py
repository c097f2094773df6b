"""A real daemon process: sd_notify, readiness, SIGHUP reloads, SIGTERM drain, and no secret anywhere."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, toml_config, unique_secret

pytestmark = pytest.mark.slow


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # not listening yet
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class DaemonProc:
    def __init__(self, cfg: Path, env: dict[str, str], port: int) -> None:
        self.cfg, self.port = cfg, port
        self.log_path = cfg.parent / "daemon.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        try:
            return http_get(self.url("/readyz"))[0] == 200
        except OSError:
            return False

    def logs(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()



def read_notifications(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            return out


def base_env(**extra: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update(extra)
    return env


def test_lifecycle_notify_ready_reload_and_term(sim, tmp_path: Path, notify_socket) -> None:
    sock_path, sock = notify_socket
    good, bad = unique_secret(), unique_secret()
    sim.set_key(good, provider="openai", behaviour="healthy")
    sim.set_key(bad, provider="openai", behaviour="invalid")
    port = free_port()
    keys = [{"name": "alpha", "provider": "openai", "secret": "env:KW_A", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1h"))
    env = base_env(KW_A=good, KW_B=bad, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="400000")
    d = DaemonProc(cfg, env, port)
    try:
        wait_for(d.ready, what="/readyz 200")
        _status, body = http_get(d.url("/readyz"))
        assert json.loads(body)["checks"] == {"config_loaded": True, "database_reachable": True,
                                              "database_writable": True, "first_cycle_done": True}
        assert http_get(d.url("/healthz"))[0] == 200
        time.sleep(0.5)
        msgs = read_notifications(sock)
        assert any(m.startswith("READY=1") for m in msgs), msgs
        assert sum("WATCHDOG=1" in m for m in msgs) >= 2, msgs  # every 200 ms: half of WATCHDOG_USEC

        # SIGHUP with a good config: a second key appears (and is probed at once on the next cycle).
        keys.append({"name": "beta", "provider": "openai", "secret": "env:KW_B", "base_url": f"{sim.url}/openai/v1"})
        cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1s"))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: 'keywatch_key_up{key="beta",provider="openai"} 0.0' in http_get(d.url("/metrics"))[1],
                 what="beta probed after reload")

        # SIGHUP with a bad config: refused with a logged error, the running config stays.
        cfg.write_text(cfg.read_text().replace('interval = "1s"', 'interval = "soon"'))
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload_refused" in d.logs(), what="reload refused log")
        assert "probe.interval" in d.logs()
        assert d.proc.poll() is None
        assert 'keywatch_key_up{key="alpha",provider="openai"} 1.0' in http_get(d.url("/metrics"))[1]
        assert 'keywatch_config_reloads_total{result="refused"} 1.0' in http_get(d.url("/metrics"))[1]
    finally:
        code = d.stop()
    assert code == 0, d.logs()
    assert any("STOPPING=1" in m for m in read_notifications(sock))


def test_sigterm_waits_for_in_flight_probes(sim, tmp_path: Path) -> None:
    slow = unique_secret()
    sim.set_key(slow, provider="openai", behaviour="healthy", latency_ms=1500)
    port = free_port()
    keys = [{"name": "slow", "provider": "openai", "secret": "env:KW_S", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1h",
                               timeout="5s"))
    d = DaemonProc(cfg, base_env(KW_S=slow), port)
    wait_for(lambda: "started" in d.logs(), what="start")
    time.sleep(0.3)  # the first probe is now in flight at the simulator
    code = d.stop()
    assert code == 0, d.logs()
    db = sqlite3.connect(tmp_path / "k.db")
    assert db.execute("select health from key_state where key='slow'").fetchone() == ("healthy",)


def test_bad_config_at_start_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text('[probe]\nconcurrency = "many"\n')
    proc = subprocess.run([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], capture_output=True, text=True,
                          env=base_env(), timeout=30)
    assert proc.returncode == 2
    assert "probe.concurrency" in proc.stderr


def test_database_outage_degrades_and_catches_up(sim, tmp_path: Path) -> None:
    """A database that cannot be written never stops probing; the state lands once it is back."""
    s = unique_secret()
    sim.set_key(s, provider="openai", behaviour="healthy")
    dbdir = tmp_path / "db"
    dbdir.write_text("a file where the database directory should be")  # the database cannot be opened
    port = free_port()
    keys = [{"name": "a", "provider": "openai", "secret": "env:KW_A", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=dbdir / "k.db", listen=f"127.0.0.1:{port}", interval="1s"))
    d = DaemonProc(cfg, base_env(KW_A=s), port)
    try:
        wait_for(lambda: 'keywatch_key_up{key="a",provider="openai"} 1.0' in http_get(d.url("/metrics"))[1],
                 what="probing without a database")
        assert http_get(d.url("/readyz"))[0] == 503
        assert "keywatch_database_up 0.0" in http_get(d.url("/metrics"))[1]
        dbdir.unlink()
        dbdir.mkdir()
        wait_for(d.ready, what="ready after the database came back")
        wait_for(lambda: (dbdir / "k.db").exists(), what="database written")
    finally:
        assert d.stop() == 0
    db = sqlite3.connect(dbdir / "k.db")
    assert db.execute("select health from key_state where key='a'").fetchone() == ("healthy",)
    assert db.execute("select count(*) from transitions where key='a'").fetchone() == (1,)


def test_no_secret_in_logs_metrics_database_or_cli(sim, tmp_path: Path) -> None:
    planted = {
        "healthy": unique_secret(),
        "invalid": unique_secret(),
        "rate_limited": unique_secret("sk-ant-api03-"),
        "server_error": unique_secret("gw-"),
    }
    for behaviour, s in planted.items():
        sim.set_key(s, provider="anthropic" if s.startswith("sk-ant") else "openai", behaviour=behaviour)
    port = free_port()
    keys = []
    env = base_env()
    for i, (behaviour, s) in enumerate(planted.items()):
        env[f"KW_{i}"] = s
        provider = "anthropic" if s.startswith("sk-ant") else "openai"
        path = "/anthropic" if provider == "anthropic" else "/openai/v1"
        keys.append({"name": f"k{i}-{behaviour}", "provider": provider, "secret": f"env:KW_{i}",
                     "base_url": f"{sim.url}{path}", "labels": {"team": "t"}})
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1s")
                   .replace("[daemon]", '[daemon]\nlog_level = "debug"'))
    d = DaemonProc(cfg, env, port)
    try:
        wait_for(d.ready, what="ready")
        time.sleep(1.5)
        metrics = http_get(d.url("/metrics"))[1]
    finally:
        assert d.stop() == 0
    outputs = {"daemon log": d.logs(), "/metrics": metrics}
    for args in (["check", "-c", str(cfg)], ["check", "-c", str(cfg), "--json"], ["status", "-c", str(cfg)],
                 ["status", "-c", str(cfg), "--json"], ["config", "validate", "-c", str(cfg)]):
        p = subprocess.run([sys.executable, "-m", "keywatch", *args], capture_output=True, text=True, env=env,
                           timeout=60)
        outputs[" ".join(args[:1] + args[3:])] = p.stdout + p.stderr
    db_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("k.db*"))
    assert "k0-healthy" in outputs["status"] and "invalid" in outputs["check --json"]
    for s in planted.values():
        for where, text in outputs.items():
            assert s not in text, f"secret found in {where}"
            assert s[6:30] not in text, f"part of a secret found in {where}"
        assert s.encode() not in db_bytes and s[6:30].encode() not in db_bytes


def test_status_page_shows_the_daemons_keys_events_and_budgets(sim, tmp_path: Path) -> None:
    """`/` on a running daemon: the keys it probed, its audit trail, a budget's spend; and `?health=` filters."""
    good, bad = unique_secret(), unique_secret()
    sim.set_key(good, provider="openai", behaviour="healthy")
    sim.set_key(bad, provider="openai", behaviour="invalid")
    port = free_port()
    keys = [{"name": "alpha", "provider": "openai", "secret": "env:KW_A", "base_url": f"{sim.url}/openai/v1"},
            {"name": "beta", "provider": "openai", "secret": "env:KW_B", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "keywatch.toml"
    budget = '\n[[budgets]]\nname = "alpha-daily"\nkey = "alpha"\nperiod = "daily"\nusd = "25"\n'
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1h", extra=budget))
    d = DaemonProc(cfg, base_env(KW_A=good, KW_B=bad), port)
    try:
        wait_for(d.ready, what="/readyz 200")
        status, body = http_get(d.url("/"))
        assert status == 200, body
        assert "2 matching keys" in body
        assert '<td>alpha</td><td>openai</td><td class="h-healthy">healthy</td>' in body
        assert '<td>beta</td><td>openai</td><td class="h-invalid">invalid</td>' in body
        assert "daemon_started" in body  # the audit trail, from the database
        # The budgets are evaluated by the usage job, which starts with the scheduler.
        wait_for(lambda: "$0.00 / $25.00 daily (alpha-daily)" in http_get(d.url("/"))[1], timeout=15,
                 what="the budget's spend on the page")
        _, only_invalid = http_get(d.url("/?health=invalid"))
        assert "1 matching keys" in only_invalid and "<td>alpha</td>" not in only_invalid
        assert good not in body and bad not in body
    finally:
        d.stop()


def test_a_status_token_that_does_not_resolve_stops_the_start_naming_it(tmp_path: Path) -> None:
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config([], db=tmp_path / "k.db", listen=f"0.0.0.0:{free_port()}").replace(
        "[probe]", 'status_token = "env:KW_STATUS_TOKEN_UNSET"\n[probe]', 1))
    proc = subprocess.run([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], capture_output=True, text=True,
                          env=base_env(), timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "daemon.status_token" in proc.stderr and "KW_STATUS_TOKEN_UNSET is not set" in proc.stderr
    assert not (tmp_path / "k.db").exists()  # refused before any side effect


def test_off_loopback_the_daemons_page_asks_for_the_token(sim, tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config([], db=tmp_path / "k.db", listen=f"0.0.0.0:{port}", interval="1h").replace(
        "[probe]", 'status_token = "env:KW_STATUS"\n[probe]', 1))
    token = "tok-" + unique_secret("")
    d = DaemonProc(cfg, base_env(KW_STATUS=token), port)
    try:
        wait_for(d.ready, what="/readyz 200")
        req = urllib.request.Request(d.url("/"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
        req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=5) as ok:
            assert ok.status == 200 and b"keywatch status" in ok.read()
        assert token not in d.logs()
    finally:
        d.stop()
