"""The database under a running daemon: made read-only then fixed, locked by another process, removed.

The promise: a database outage degrades the daemon (probing and /metrics go on, /readyz says why), never
crashes it, never causes a false action, and loses nothing: what could not be written is written when it
can be, or reported at stop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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

ALERT_ON_INVALID = (
    '\n[[policies]]\nname = "page-on-invalid"\nwhen = { health = "invalid" }\n'
    'actions = [{ type = "alert", severity = "critical" }]\n'
)


def unprivileged() -> list[str]:
    """Root ignores file modes: the daemon runs without the capabilities that let it (tests run as root)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only file would still be writable")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def wait_for(predicate, what: str, timeout: float = 15.0, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """One `keywatch run` process with its log, its /metrics and /readyz."""

    def __init__(self, tmp: Path, sim, names: list[str], db: Path, extra: str = "", interval: str = "1s") -> None:
        self.secrets = {n: unique_secret() for n in names}
        for s in self.secrets.values():
            sim.set_key(s, provider="openai", behaviour="healthy")
        self.sim = sim
        self.port = free_port()
        keys = [{"name": n, "provider": "openai", "secret": f"env:KW_{n.upper()}", "base_url": f"{sim.url}/openai/v1"}
                for n in names]
        self.cfg = tmp / "keywatch.toml"
        self.cfg.write_text(toml_config(keys, db=db, listen=f"127.0.0.1:{self.port}", interval=interval,
                                        extra=extra))
        self.env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        self.env.update({f"KW_{n.upper()}": s for n, s in self.secrets.items()})
        self.log_path = tmp / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self._log_from = 0

    def start(self, prefix: list[str] | None = None) -> Daemon:
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "keywatch", "run", "-c", str(self.cfg)],
                                     env=self.env, stdout=self.log_path.open("a"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.readyz()[0] == 200, "/readyz 200 after start")
        return self

    def set(self, name: str, behaviour: str) -> None:
        self.sim.set_key(self.secrets[name], provider="openai", behaviour=behaviour)

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def readyz(self) -> tuple[int, dict[str, bool]]:
        status, body = self._get("/readyz")
        return status, json.loads(body)["checks"]

    def metric(self, line_start: str) -> float | None:
        for line in self._get("/metrics")[1].splitlines():
            if line.startswith(line_start + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def health(self, name: str) -> str | None:
        for line in self._get("/metrics")[1].splitlines():
            if line.startswith(f'keywatch_key_health{{key="{name}"') and line.endswith(" 1.0"):
                return line.split('health="')[1].split('"')[0]
        return None

    def logs(self) -> list[dict]:
        out = []
        with self.log_path.open() as f:
            f.seek(self._log_from)
            for line in f:
                if line.startswith("{"):
                    out.append(json.loads(line))
        return out

    def events(self, name: str) -> list[dict]:
        return [e for e in self.logs() if e.get("event") == name]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(30)
        text = self.log_path.read_text()
        assert all(s not in text for s in self.secrets.values())  # never a secret in the log
        return code


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def set_mode(db: Path, file_mode: int, dir_mode: int) -> None:
    if dir_mode & 0o200:
        db.parent.chmod(dir_mode)
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if p.exists():
            p.chmod(file_mode)
    if not dir_mode & 0o200:
        db.parent.chmod(dir_mode)


@pytest.fixture
def cleanup():
    """Kills what a failed scenario left running."""
    daemons: list[Daemon] = []
    yield daemons.append
    for d in daemons:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def test_sqlite_read_only_then_fixed_recovers_and_loses_nothing(sim, tmp_path: Path, figure, cleanup) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "k.db"
    d = Daemon(tmp_path, sim, ["k0", "k1", "k2", "k3"], db, extra=ALERT_ON_INVALID)
    cleanup(d)
    prefix = unprivileged()
    d.start(prefix)
    assert d.stop() == 0
    assert len(rows(db, "select key from key_state")) == 4

    # The database is read-only when the daemon starts, and two keys die meanwhile.
    set_mode(db, 0o444, 0o555)
    try:
        d.set("k0", "invalid")
        d.set("k1", "invalid")
        d.proc = subprocess.Popen([*prefix, sys.executable, "-m", "keywatch", "run", "-c", str(d.cfg)], env=d.env,
                                  stdout=d.log_path.open("a"), stderr=subprocess.STDOUT)
        wait_for(lambda: d.health("k0") == "invalid" and d.health("k1") == "invalid", "dead keys seen")
        wait_for(lambda: d.metric("keywatch_database_up") == 0.0, "keywatch_database_up 0")
        _, checks = wait_for(lambda: (r := d.readyz())[0] == 503 and r, "/readyz 503")
        assert checks["database_writable"] is False and checks["config_loaded"] is True
        time.sleep(2)  # a few more cycles with nothing written
        assert d.proc.poll() is None
    finally:
        set_mode(db, 0o644, 0o755)
    fixed = time.monotonic()
    wait_for(lambda: d.metric("keywatch_database_up") == 1.0 and d.readyz()[0] == 200, "recovery after the fix")
    recovered_s = time.monotonic() - fixed
    wait_for(lambda: len(rows(db, "select id from transitions where new = 'invalid'")) == 2, "transitions written")

    def alerted() -> set[str]:
        payloads = [json.loads(p) for (p,) in rows(db, "select payload from alert_outbox")]
        return {a["identity"] for p in payloads for a in p["alerts"]}

    wait_for(lambda: {"key_health:k0", "key_health:k1"} <= alerted(), "both alerts written to the outbox")
    admin = dict(rows(db, "select key, admin_state from key_state"))
    false_disables = sum(1 for k in ("k2", "k3") if admin[k] != "active")
    assert false_disables == 0, admin
    assert d.metric('keywatch_database_dropped_total{kind="transitions"}') in (None, 0.0)
    assert d.stop() == 0
    written = len(rows(db, "select id from transitions where new = 'invalid'"))

    # Read-only again, and stopped before it is fixed: what could not be written is reported, by name.
    set_mode(db, 0o444, 0o555)
    try:
        d.set("k2", "invalid")
        d.proc = subprocess.Popen([*prefix, sys.executable, "-m", "keywatch", "run", "-c", str(d.cfg)], env=d.env,
                                  stdout=d.log_path.open("a"), stderr=subprocess.STDOUT)
        d._log_from = d.log_path.stat().st_size
        wait_for(lambda: d.health("k2") == "invalid" and d.metric("keywatch_database_up") == 0.0, "k2 dead, db down")
        assert d.stop() == 0
    finally:
        set_mode(db, 0o644, 0o755)
    unwritten = d.events("database_unwritten_at_stop")
    assert unwritten and unwritten[0]["transitions"] >= 1, d.log_path.read_text()[-3000:]
    assert any(e["key"] == "k2" and e["new"] == "invalid" for e in d.events("transition_unwritten"))
    assert d.events("alerts_unwritten_at_stop"), "the alert that could not be stored is reported"
    figure("sqlite read-only, then fixed",
           f"0 transitions lost of {written} (+{unwritten[0]['transitions']} reported unwritten at a stop while "
           f"still read-only), recovered {recovered_s:.1f}s after the fix, {false_disables} false disables")


STORE_WRITES_READ_ONLY = """
import gc, os, sys
from sqlalchemy import text
from keywatch.store.repo import make_engine
db = sys.argv[1]
gc.disable()  # what the failed writes leave behind must be closed by them, not by a later collection
engine = make_engine(f"sqlite:///{db}")
failed = 0
for _ in range(3):
    try:
        with engine.begin() as conn:
            conn.execute(text("insert into t values (1)"))
    except Exception:
        failed += 1
def held():
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == db
        except OSError:
            pass
    return n
print(failed, held(), flush=True)
sys.stdin.readline()  # the test makes the file writable again
with engine.begin() as conn:
    conn.execute(text("insert into t values (2)"))
print("written", flush=True)
"""


def test_failed_writes_on_a_read_only_file_leave_nothing_open(tmp_path: Path) -> None:
    """A write refused because the file is read-only closes its connection at once: one left open keeps the
    file's shared memory read-only for the whole process, so writes would go on failing after the fix."""
    db = tmp_path / "k.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("create table t (x)")
    keep = sqlite3.connect(db)  # the -wal and -shm files exist while the file is read-only, as under a daemon
    keep.execute("select * from t").fetchall()
    set_mode(db, 0o444, 0o555)
    try:
        proc = subprocess.Popen([*unprivileged(), sys.executable, "-c", STORE_WRITES_READ_ONLY, str(db)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
        line = proc.stdout.readline()
    finally:
        set_mode(db, 0o644, 0o755)
        keep.close()
    out, err = proc.communicate("fixed\n", timeout=30)
    assert line.split() == ["3", "0"], err  # three writes refused, no descriptor of the file left open
    assert out.strip() == "written", err
    assert rows(db, "select x from t") == [(2,)]


def test_sqlite_locked_by_another_process_does_not_stall_probing(sim, tmp_path: Path, figure, cleanup) -> None:
    db = tmp_path / "k.db"
    d = Daemon(tmp_path, sim, ["k0", "k1", "k2", "k3"], db)
    cleanup(d)
    d.start()
    try:
        wait_for(lambda: len(d.events("cycle_done")) >= 2, "two cycles")
        holder = sqlite3.connect(db, isolation_level=None, timeout=1)
        holder.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        cycles_before = len(d.events("cycle_done"))
        time.sleep(1)
        d.set("k0", "invalid")
        died = time.monotonic()
        wait_for(lambda: d.health("k0") == "invalid", "the dead key seen while the database is locked")
        detected_s = time.monotonic() - died
        unready = wait_for(lambda: d.readyz()[0] == 503 and d.readyz()[1], "/readyz 503 while locked")
        assert unready["database_writable"] is False
        time.sleep(max(0.0, locked_at + 8 - time.monotonic()))
        held_s = time.monotonic() - locked_at
        cycles = len(d.events("cycle_done")) - cycles_before
        holder.execute("ROLLBACK")
        holder.close()
        released = time.monotonic()
        wait_for(lambda: d.readyz()[0] == 200 and d.metric("keywatch_database_up") == 1.0, "ready after release")
        recovered_s = time.monotonic() - released
        wait_for(lambda: rows(db, "select old, new from transitions where key = 'k0' order by id")[-1:]
                 == [("healthy", "invalid")], "the transition written after the lock")
        assert rows(db, "select count(*) from transitions where key = 'k0' and new = 'invalid'") == [(1,)]
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert detected_s < 3.0, detected_s  # one interval, plus one bounded wait for the first stuck write
    # interval 1s; the old daemon made 1. The cycle that sees the key die still waits on the alert outbox and
    # the admin write (notify, engine: each at most BUSY_TIMEOUT), so not every second is a cycle yet.
    assert cycles >= 3, (cycles, held_s)
    figure("sqlite locked by another process",
           f"{cycles} cycles in {held_s:.0f}s locked (interval 1s), dead key seen {detected_s:.1f}s after it died, "
           f"unready while locked, ready {recovered_s:.1f}s after release, its transition written once")


def test_database_directory_removed_is_reported_not_silently_recreated(
    sim, tmp_path: Path, figure, cleanup
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "k.db"
    d = Daemon(tmp_path, sim, ["k0", "k1"], db)
    cleanup(d)
    d.start()
    try:
        wait_for(lambda: len(d.events("cycle_done")) >= 2, "two cycles")
        shutil.rmtree(state)
        removed = time.monotonic()
        wait_for(lambda: d.metric("keywatch_database_up") == 0.0, "keywatch_database_up 0")
        status, checks = d.readyz()
        noticed_s = time.monotonic() - removed
        assert status == 503 and checks["database_reachable"] is False and checks["database_writable"] is False
        lost = wait_for(lambda: d.events("database_lost"), "database_lost logged")
        assert lost[0]["level"] == "error" and lost[0]["setting"] == "daemon.database"
        d.set("k1", "invalid")
        wait_for(lambda: d.health("k1") == "invalid", "probing goes on")
        state.mkdir()  # the directory is back, empty: the daemon must not start over in it
        cycles = len(d.events("cycle_done"))
        wait_for(lambda: len(d.events("cycle_done")) >= cycles + 2, "two more cycles")
        assert not db.exists(), "the running daemon created an empty database in place of the removed one"
        assert d.readyz()[0] == 503 and d.proc.poll() is None
    finally:
        assert d.stop() == 0
    unwritten = d.events("database_unwritten_at_stop")
    assert unwritten and unwritten[0]["transitions"] >= 1
    figure("sqlite directory removed under the daemon",
           f"noticed in {noticed_s:.1f}s (database_up 0, unready, database_lost error), file not recreated, "
           f"{unwritten[0]['transitions']} transition(s) reported unwritten at stop")
