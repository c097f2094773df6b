"""A daemon on PostgreSQL whose backends are killed (pg_terminate_backend) and whose server then refuses
connections for a while: it keeps probing, says it is not ready, and writes what happened meanwhile once the
database is back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.faults.support import wait_for
from tests.integration.conftest import PG_ADMIN, _pg_unavailable, free_port, toml_config, unique_secret

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class Proxy:
    """A TCP proxy in front of PostgreSQL that can refuse connections and cut the open ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._server = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def refuse(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._server.close()
            self._server = None
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if self._server is not server:  # refused meanwhile
                client.close()
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.HTTPError, OSError):
        return False




def test_killed_backends_and_a_refusing_server_degrade_and_lose_nothing(sim, tmp_path: Path, figure) -> None:
    reason = _pg_unavailable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    dbname = f"kw_faults_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {dbname}"))
    proxy = Proxy(("127.0.0.1", 5432))
    proxy.open()
    secrets = {f"k{i:02d}": unique_secret() for i in range(20)}
    for s in secrets.values():
        sim.set_key(s, provider="openai", behaviour="healthy")
    keys = [{"name": n, "provider": "openai", "secret": f"env:KW_{n.upper()}", "base_url": f"{sim.url}/openai/v1"}
            for n in secrets]
    port = free_port()
    cfg = tmp_path / "keywatch.toml"
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/{dbname}"
    cfg.write_text(toml_config(keys, db=tmp_path / "unused.db", listen=f"127.0.0.1:{port}", interval="1s")
                   .replace(f'sqlite:///{tmp_path / "unused.db"}', url))
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update({f"KW_{n.upper()}": s for n, s in secrets.items()})
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    target = create_engine(PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}")
    try:
        wait_for(lambda: ready(port), "the daemon ready on PostgreSQL")
        # 1. Every backend of the daemon killed, three times.
        for _ in range(3):
            with admin.connect() as c:
                c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": dbname})
            time.sleep(1.2)
        sim.set_key(secrets["k00"], provider="openai", behaviour="invalid")
        wait_for(lambda: ready(port) and metric(port, "keywatch_database_up") == 1, "recovery after the kills")
        # 2. The server refuses connections for a while; a key dies meanwhile.
        proxy.refuse()
        t0 = time.monotonic()
        sim.set_key(secrets["k01"], provider="openai", behaviour="invalid")
        wait_for(lambda: metric(port, "keywatch_database_up") == 0, "the daemon to notice the refusing database")
        cycles_before = metric(port, "keywatch_last_cycle_timestamp_seconds") or 0
        wait_for(lambda: (metric(port, "keywatch_last_cycle_timestamp_seconds") or 0) > cycles_before + 1,
                 "probing to go on without the database")
        assert not ready(port)
        time.sleep(max(0.0, 5 - (time.monotonic() - t0)))
        proxy.open()
        wait_for(lambda: ready(port) and metric(port, "keywatch_database_up") == 1, "recovery after the refusal")
        down_s = time.monotonic() - t0

        def written() -> set[str]:
            with target.connect() as c:
                return {r[0] for r in c.execute(text("SELECT key FROM transitions WHERE new = 'invalid'"))}

        wait_for(lambda: {"k00", "k01"} <= written(), "both deaths in the database")
        assert proc.poll() is None  # never crashed
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        proxy.refuse()
        target.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
        admin.dispose()
    assert code == 0, log.read_text()[-3000:]
    assert all(s not in log.read_text() for s in secrets.values())
    figure("PostgreSQL backends killed x3, server refusing", f"kept probing, unready while down, recovered "
           f"{down_s:.1f}s after the refusal began, 0 transitions lost, exit 0")
