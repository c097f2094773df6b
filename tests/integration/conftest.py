"""Shared fixtures: the provider simulator (a real HTTP server on loopback) and config writing."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

from keywatch.sim import Simulator
from keywatch.sim.server import SimulatorThread

_counter = itertools.count()


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


def unique_secret(prefix: str = "sk-proj-") -> str:
    n = next(_counter)
    return f"{prefix}{'kwtest' * 6}{n:06d}Zq9X"


@pytest.fixture
def secret_factory():
    return unique_secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_config(keys: list[dict], *, db: Path, listen: str | None = None, interval: str = "2s",
                timeout: str = "2s", concurrency: int = 8, extra: str = "") -> str:
    lines = ["[daemon]", f'database = "sqlite:///{db}"', f'listen = "{listen or f"127.0.0.1:{free_port()}"}"',
             "[probe]", f'interval = "{interval}"', f'timeout = "{timeout}"', f"concurrency = {concurrency}",
             "jitter = 0", "spread = 0", ""]
    for k in keys:
        lines.append("[[keys]]")
        for field, value in k.items():
            if isinstance(value, dict):
                inner = ", ".join(f'{a} = "{b}"' for a, b in value.items())
                lines.append(f"{field} = {{ {inner} }}")
            else:
                lines.append(f'{field} = "{value}"')
        lines.append("")
    return "\n".join(lines) + extra


PYTHON = sys.executable


@pytest.fixture
async def fresh_sim() -> AsyncIterator[Simulator]:
    """A simulator of the test's own, in the test's event loop: keys and behaviours one test sets up
    cannot leak into the next (the session-wide `sim` is shared)."""
    simulator = Simulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


# The two ways a probe's GET is made: through the client's own request path (the SDKs', management calls'),
# or the lean path on the shared aiohttp session (providers.lean). Probe tests run over both.
PROBE_PATHS = ("sdk", "lean")


def shared_client(path: str, concurrency: int = 4, timeout: float = 30.0) -> httpx2.AsyncClient:
    """The daemon's shared client; on the `sdk` path without its lean probe path."""
    from keywatch.providers.clients import make_http_client

    client = make_http_client(concurrency, timeout)
    if path == "sdk":
        client.keywatch_lean = None
    return client


@pytest.fixture(params=PROBE_PATHS)
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx2.AsyncClient]:
    """The real HTTP client an adapter under test is given, closed after the test: a plain client (every
    request through httpx2) or the daemon's shared client, whose zero-token probes take the lean path."""
    client = httpx2.AsyncClient() if request.param == "sdk" else shared_client("lean")
    async with client:
        yield client


PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_unavailable() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install keywatch[postgres])"
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return None
    except OSError:
        return "no PostgreSQL server at 127.0.0.1:5432"


@contextmanager
def fresh_database(prefix: str = "kw_ha") -> Iterator[str]:
    """CREATE DATABASE <prefix>_<random>, yield its URL, drop it (sessions ended) afterwards."""
    reason = _pg_unavailable()
    if reason:
        pytest.skip(reason)
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.dispose()  # a fresh connection: the server may have restarted under the pooled one
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """A keywatch Store on SQLite, then on the local PostgreSQL in a schema of its own (dropped after)."""
    import uuid

    from sqlalchemy import create_engine, text

    from keywatch.store.repo import Store

    if request.param == "sqlite":
        s = Store(f"sqlite:///{tmp_path / 'k.db'}")
        yield s
        s.dispose()
        return
    reason = _pg_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"kw_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    s = Store(f"{PG_ADMIN}?options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def notify_socket(tmp_path: Path):
    """A real unix datagram socket, as systemd's NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


# moto loads AWS's managed IAM policies (AdministratorAccess, the quarantine policies) only when this is set
# before its IAM backend first loads, whichever test module starts moto first.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, its request log quiet; yields its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def set_moto_auth(url: str, count: str) -> None:
    """moto checks signatures only after INITIAL_NO_AUTH_ACTION_COUNT requests; "0" turns checking on now,
    "inf" off (the setting is process-wide in moto)."""
    req = urllib.request.Request(f"{url}/moto-api/reset-auth", data=count.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
