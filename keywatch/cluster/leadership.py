"""Leadership on PostgreSQL: a session-level advisory lock on a dedicated connection (TCP keepalives on),
a heartbeat per member, and a fencing token per term.

Each heartbeat an instance writes its member row; a follower tries the lock, and takes over when it gets it
(the token goes up by one); when the lock is held by a leader whose heartbeat is older than the takeover
timeout (a frozen process keeps its TCP session, and so its lock), the follower ends that leader's database
sessions, and takes the lock at its next heartbeat. The leader checks at each heartbeat that its lock
session lives and that the token is still its own; otherwise it steps down.

`fence(session)` is the check every acting path makes in the transaction that records the act.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from keywatch.cluster.config import ClusterSettings
from keywatch.cluster.shard import share
from keywatch.cluster.store import ClusterStore, Member, application_name
from keywatch.runtime import NotLeader

log = structlog.get_logger("keywatch.cluster")

# Keepalives on the lock connection: a peer that vanished (host down, cable cut) ends the session, and so
# frees the lock, within about idle + interval * count seconds.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def default_instance() -> str:
    return socket.gethostname().split(".")[0][:64] or "keywatch"


def name_sessions(engine: Engine, instance: str, *, keepalives: bool = False) -> None:
    """Every new connection of `engine` carries the instance's application_name (so a successor can end
    them all) and, with `keepalives`, TCP keepalives."""

    @event.listens_for(engine, "do_connect")
    def _name(_dialect: Any, _rec: Any, _cargs: list[Any], cparams: dict[str, Any]) -> None:
        cparams["application_name"] = application_name(instance)
        if keepalives:
            cparams.update(KEEPALIVES)


class PgLeadership:
    def __init__(
        self, engine: Engine, settings: ClusterSettings, on_change: Callable[[bool], None] | None = None
    ) -> None:
        self.instance = settings.instance or default_instance()
        self.settings = settings
        self.store = ClusterStore(engine)
        self.on_change = on_change
        self._lock_engine = create_engine(engine.url, poolclass=NullPool)
        name_sessions(self._lock_engine, self.instance, keepalives=True)
        name_sessions(engine, self.instance, keepalives=True)
        self._conn: Connection | None = None
        self._mutex = threading.Lock()
        self._token: int | None = None
        self._confirmed_at = 0.0  # monotonic time of the last heartbeat that confirmed the term
        self.members: list[str] = [self.instance]
        self.member_rows: list[Member] = []
        self.leader_name: str | None = None
        self.takeovers = 0
        self.last_error: str | None = None
        self.started_at = datetime.now(UTC)
        self.host = socket.gethostname()

    # -- the gate ---------------------------------------------------------------------------------------
    @property
    def leading(self) -> bool:
        if self._token is None:
            return False
        # A term not confirmed for longer than the takeover timeout may have ended (the process was frozen):
        # act only once a heartbeat has confirmed it again.
        return time.monotonic() - self._confirmed_at < self.settings.takeover_timeout

    @property
    def token(self) -> int | None:
        return self._token

    def fence(self, session: Session) -> None:
        token = self._token
        if token is None:
            raise NotLeader(f"{self.instance} does not lead")
        if not self.leading:
            raise NotLeader(f"{self.instance}: its term is unconfirmed", unconfirmed=True)
        if not ClusterStore.check_token(session, self.instance, token):
            self._step_down("fencing token superseded")
            raise NotLeader(f"{self.instance}: fencing token {token} superseded")

    def details(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "leader": self.leading,
            "leader_instance": self.leader_name,
            "token": self._token,
            "members": list(self.members),
            "mode": "postgresql",
        }

    def share(self, keys: list[str]) -> set[str]:
        return share(keys, self.members, self.instance)

    # -- the heartbeat ----------------------------------------------------------------------------------
    def duplicate(self) -> Member | None:
        """A live member with this instance's name but another process: a config mistake at start."""
        for m in self.store.members():
            if (
                m.instance == self.instance
                and m.age_s < self.settings.takeover_timeout
                and (m.host != self.host or m.pid != os.getpid())
            ):
                return m
        return None

    def beat(self) -> None:
        """Blocking: one heartbeat, and whatever it decides about leadership. Raises on database errors."""
        with self._mutex:
            try:
                self._beat()
                self.last_error = None
            except Exception as exc:
                self.last_error = type(exc).__name__
                self._drop_conn()
                if self._token is not None and not self.leading:
                    self._step_down("leadership unconfirmed (database)")
                raise

    def _beat(self) -> None:
        st = self.store
        st.heartbeat(self.instance, self.host, os.getpid(), self.started_at)
        rows = st.members()
        self.member_rows = rows
        live = [m.instance for m in rows if m.age_s < self.settings.takeover_timeout]
        self.members = sorted(set(live) | {self.instance})
        conn = self._connection()
        if self._token is not None:
            ClusterStore.alive(conn)
            current = st.leader()
            if current.instance != self.instance or current.token != self._token:
                self._step_down(f"leadership passed to {current.instance} (token {current.token})")
                return
            self._confirmed_at = time.monotonic()
            self.leader_name = self.instance
            return
        if ClusterStore.try_lock(conn):
            token = st.take_over(self.instance, ClusterStore.backend_pid(conn))
            previous = self.leader_name
            self._token, self._confirmed_at = token, time.monotonic()
            self.leader_name = self.instance
            self.takeovers += 1
            log.info("leadership_taken", instance=self.instance, token=token, previous=previous)
            if self.on_change is not None:
                self.on_change(True)
            return
        current = st.leader()
        self.leader_name = current.instance
        if current.instance and current.instance != self.instance and current.instance not in live:
            n = st.end_sessions(current.instance)
            log.warning(
                "leader_deposed",
                leader=current.instance,
                token=current.token,
                sessions_ended=n,
                reason=f"no heartbeat for {self.settings.takeover_timeout:g}s",
            )

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self._lock_engine.connect()
        return self._conn

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a session already gone: nothing to close
                conn.invalidate()
                conn.close()

    def _step_down(self, why: str) -> None:
        if self._token is None:
            return
        log.warning("leadership_lost", instance=self.instance, token=self._token, reason=why)
        self._token = None
        self._drop_conn()  # the lock goes with the session
        if self.on_change is not None:
            self.on_change(False)

    async def run(self) -> None:
        """The heartbeat task: never raises (a database outage is logged and retried)."""
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.beat)
                if failing:
                    log.info("cluster_heartbeat_recovered", instance=self.instance)
                failing = False
            except Exception as exc:
                if not failing:
                    log.error("cluster_heartbeat_failed", instance=self.instance, error=type(exc).__name__)
                failing = True
            await asyncio.sleep(self.settings.heartbeat)

    def close(self) -> None:
        """Blocking: leave the fleet (the lock goes with the session)."""
        with self._mutex:
            was = self._token is not None
            self._token = None
            self._drop_conn()
            with contextlib.suppress(Exception):  # the database is down: the row ages out
                self.store.leave(self.instance)
            self._lock_engine.dispose()
            if was:
                log.info("leadership_released", instance=self.instance)
