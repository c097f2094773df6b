"""What the daemon does about the fleet: one instance on SQLite (a lock file refuses a second one), or a
member of a PostgreSQL fleet (heartbeat, leadership, its share of the keys, the others' states)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Gauge

from keywatch.cluster.config import ClusterSettings
from keywatch.cluster.leadership import PgLeadership, default_instance
from keywatch.cluster.lockfile import AlreadyRunning, InstanceLock
from keywatch.cluster.store import ClusterStore, Member
from keywatch.runtime import SOLO, Leadership, attach_leadership

if TYPE_CHECKING:
    from keywatch.domain import ManagedKey
    from keywatch.state import StateTracker
    from keywatch.store.repo import Store

log = structlog.get_logger("keywatch.cluster")

FOLLOWER_REFRESH = 10.0  # seconds: how often a follower refreshes the others' keys for its /metrics
FLEET_OVERLAP = 120.0  # seconds re-read at each fleet read: a cycle's late commit, clock skew between hosts


class ClusterRefused(RuntimeError):
    """This instance cannot join (a second one on SQLite, a name already in use): a config problem."""


class Node:
    def __init__(self, settings: ClusterSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.leadership: Leadership = SOLO
        self.pg: PgLeadership | None = None
        self._lock: InstanceLock | None = None
        self._task: asyncio.Task[None] | None = None
        self._fleet_read_at: datetime | None = None
        self._fleet_read_mono = -FOLLOWER_REFRESH
        self.gauge = Gauge(
            "keywatch_leader",
            "1 while this instance leads (acts on keys, sends alerts)",
            ["instance"],
            registry=registry,
        )

    # -- start ----------------------------------------------------------------------------------------
    def lock_sqlite(self, url: str) -> None:
        """Before anything else at start: refuse a second instance on one SQLite file."""
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(url)
        except Exception:
            return  # the store reports an unparseable URL
        db = parsed.database
        if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
            return
        path = Path(db)
        if not path.parent.is_dir():
            return  # created later (or reported) by the database location check
        lock = InstanceLock(path if path.is_absolute() else Path.cwd() / path)
        try:
            lock.acquire()
        except AlreadyRunning as exc:
            raise ClusterRefused(f"daemon.database: {exc}") from None
        except OSError as exc:
            log.warning("instance_lock_unavailable", file=str(lock.path), error=exc.strerror)
            return
        self._lock = lock

    async def join(self, store: Store, on_change: Callable[[bool], None]) -> None:
        """On PostgreSQL: a first heartbeat (which takes the lead when nobody holds it), then one per
        `cluster.heartbeat`. A database that is down now is an outage like any other: the heartbeat task
        keeps trying, and nothing acts until a heartbeat has confirmed the lead."""
        if store.engine.dialect.name != "postgresql":
            self.gauge.labels(self.settings.instance or default_instance()).set(1)
            return
        loop = asyncio.get_running_loop()

        def changed(leading: bool) -> None:
            self.gauge.labels(pg.instance).set(1 if leading else 0)
            loop.call_soon_threadsafe(on_change, leading)

        pg = PgLeadership(store.engine, self.settings, on_change=changed)
        self.pg, self.leadership = pg, pg
        attach_leadership(store.engine, pg)
        # From now on every session of this instance carries its name (a successor ends them all by it):
        # the connections opened before (migration, first reads) are closed, not reused.
        store.engine.dispose()
        self.gauge.labels(pg.instance).set(0)
        twin = await self._live_twin(pg)
        if twin is not None:
            raise ClusterRefused(
                f"cluster.instance: another live instance is named {pg.instance!r} (host {twin.host}, pid "
                f"{twin.pid}, heartbeat {twin.age_s:.1f}s ago); give each instance its own name"
            )
        with contextlib.suppress(Exception):
            await asyncio.to_thread(pg.beat)
        self._task = asyncio.create_task(pg.run(), name="cluster-heartbeat")

    @staticmethod
    async def _live_twin(pg: PgLeadership) -> Member | None:
        """A live instance under this name: its heartbeat is fresh and still advances. A fresh row that
        stops advancing is this instance's own, from before a crash (systemd restarts it at once)."""
        try:
            first = await asyncio.to_thread(pg.duplicate)
            if first is None:
                return None
            await asyncio.sleep(2.5 * pg.settings.heartbeat)
            again = await asyncio.to_thread(pg.duplicate)
        except Exception:
            return None  # the database is down: the heartbeat says so, and retries
        return again if again is not None and again.heartbeat_at > first.heartbeat_at else None

    # -- each cycle -----------------------------------------------------------------------------------
    @property
    def clustered(self) -> bool:
        return self.pg is not None

    def share(self, keys: list[ManagedKey]) -> list[ManagedKey]:
        """The keys this instance probes this cycle (all of them when alone)."""
        if self.pg is None:
            return keys
        mine = self.pg.share([k.name for k in keys])
        return [k for k in keys if k.name in mine]

    def wants_fleet(self) -> bool:
        """Read the others' states this cycle: the leader decides on the whole fleet, every cycle; a
        follower shows it on /metrics (unless `cluster.metrics = "share"`), refreshed every cycle but at
        most every FOLLOWER_REFRESH seconds."""
        if self.pg is None:
            return False
        if self.leadership.leading:
            return True
        if self.settings.metrics != "fleet":
            return False
        return time.monotonic() - self._fleet_read_mono >= FOLLOWER_REFRESH

    def adopt_fleet(self, tracker: StateTracker, store: Store, probed: set[str]) -> int:
        """Blocking: take the states of the keys the others probe from the shared database. Only rows
        written since the last read (less FLEET_OVERLAP, for writes that commit late or come from a host
        whose clock is behind) are read and converted."""
        since = self._fleet_read_at - timedelta(seconds=FLEET_OVERLAP) if self._fleet_read_at else None
        self._fleet_read_mono = time.monotonic()
        others, self._fleet_read_at = ClusterStore(store.engine).fleet_states(since, probed)
        tracker.adopt(others)
        return len(others)

    def details(self) -> dict[str, Any]:
        if self.pg is None:  # alone: the name the keywatch_leader gauge carries
            return {"instance": self.settings.instance or default_instance(), "leader": True, "mode": "single"}
        d = self.leadership.details()
        if self.pg is not None and self.pg.last_error:
            d["error"] = self.pg.last_error
        return d

    def ready(self) -> bool:
        """A member is ready once a heartbeat went through and none has failed since."""
        return self.pg is None or (self.pg.last_error is None and bool(self.pg.member_rows))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.pg is not None:
            await asyncio.to_thread(self.pg.close)
            self.gauge.labels(self.pg.instance).set(0)
        if self._lock is not None:
            self._lock.release()
