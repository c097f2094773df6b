"""Every cluster read and write: heartbeats, live members, the leadership row and the fencing check.

Synchronous, like keywatch.store.repo (called from a worker thread). Times come from the database's clock
(`now()`), so hosts whose clocks differ still agree on who is alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, delete, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from keywatch.cluster.models import ClusterLeaderRow, ClusterMemberRow
from keywatch.domain import KeyState
from keywatch.store.models import KeyStateRow
from keywatch.store.repo import _to_state, dialect_insert, without_lock_timeout

# The advisory lock's key: one per database (b"keywatch" as a signed 64-bit integer).
LOCK_KEY = int.from_bytes(b"keywatch", "big", signed=True)


@dataclass(frozen=True, slots=True)
class Member:
    instance: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    age_s: float


@dataclass(frozen=True, slots=True)
class Leader:
    instance: str | None
    token: int
    backend_pid: int | None
    since: datetime | None


def application_name(instance: str) -> str:
    """What every database session of an instance is called (pg_stat_activity.application_name)."""
    return f"keywatch:{instance}"[:63]


# Instances starting together on a new database migrate one at a time (another lock key than leadership's).
MIGRATION_LOCK_KEY = LOCK_KEY + 1


@contextmanager
def migrating(engine: Engine) -> Iterator[None]:
    """Hold the migration lock while the caller migrates (PostgreSQL; a no-op elsewhere): the second
    instance then finds the tables the first created, instead of failing on them."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        without_lock_timeout(conn)  # another instance's migration may take longer than a write may wait
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
            conn.commit()


class ClusterStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)

    # -- members --------------------------------------------------------------------------------------
    def heartbeat(self, instance: str, host: str, pid: int, started_at: datetime) -> None:
        t = ClusterMemberRow.__table__
        ins = dialect_insert(self.engine, t).values(
            instance=instance, host=host, pid=pid, started_at=started_at, heartbeat_at=func.now()
        )
        stmt = ins.on_conflict_do_update(
            index_elements=["instance"],
            set_={
                "host": ins.excluded.host,
                "pid": ins.excluded.pid,
                "started_at": ins.excluded.started_at,
                "heartbeat_at": func.now(),
            },
        )
        with self.session.begin() as s:
            s.execute(stmt)

    def members(self) -> list[Member]:
        age = func.extract("epoch", func.now() - ClusterMemberRow.heartbeat_at)
        with self.session() as s:
            rows = s.execute(select(ClusterMemberRow, age).order_by(ClusterMemberRow.instance)).all()
        return [Member(r.instance, r.host, r.pid, r.started_at, r.heartbeat_at, float(a)) for r, a in rows]

    def leave(self, instance: str) -> None:
        with self.session.begin() as s:
            s.execute(delete(ClusterMemberRow).where(ClusterMemberRow.instance == instance))

    # -- leadership -----------------------------------------------------------------------------------
    def leader(self) -> Leader:
        with self.session() as s:
            r = s.get(ClusterLeaderRow, 1)
        if r is None:
            return Leader(None, 0, None, None)
        return Leader(r.instance, r.token, r.backend_pid, r.since)

    @staticmethod
    def try_lock(conn: Connection) -> bool:
        """On the dedicated connection: take the session-level advisory lock if nobody holds it."""
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar()
        conn.commit()
        return bool(got)

    @staticmethod
    def backend_pid(conn: Connection) -> int:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        conn.commit()
        return int(pid)

    @staticmethod
    def alive(conn: Connection) -> None:
        """On the dedicated connection: raises when its session is gone (and the lock with it)."""
        conn.execute(text("SELECT 1")).scalar_one()
        conn.commit()

    def take_over(self, instance: str, backend_pid: int) -> int:
        """The lock holder's new term: the token goes up by one. Waits at most 5 s for fenced transactions of
        the previous term to end (their sessions are ended first when that leader stopped beating)."""
        with self.session.begin() as s:
            s.execute(text("SET LOCAL lock_timeout = '5s'"))
            token = s.execute(
                update(ClusterLeaderRow)
                .where(ClusterLeaderRow.id == 1)
                .values(token=ClusterLeaderRow.token + 1, instance=instance, backend_pid=backend_pid, since=func.now())
                .returning(ClusterLeaderRow.token)
            ).scalar_one_or_none()
            if token is None:
                s.add(
                    ClusterLeaderRow(
                        id=1, instance=instance, token=1, backend_pid=backend_pid, since=datetime.now().astimezone()
                    )
                )
                token = 1
        return int(token)

    @staticmethod
    def check_token(s: Session, instance: str, token: int) -> bool:
        """Inside the caller's transaction: is (instance, token) still the current term? The row is read FOR
        SHARE, so a takeover (which updates it) waits until this transaction has committed: nothing the
        old term records can land after the new term began."""
        r = s.execute(
            select(ClusterLeaderRow.instance, ClusterLeaderRow.token)
            .where(ClusterLeaderRow.id == 1)
            .with_for_update(read=True)
        ).first()
        return r is not None and r.instance == instance and int(r.token) == token

    def fleet_states(self, since: datetime | None, skip: set[str]) -> tuple[list[KeyState], datetime]:
        """The key states written since `since` (all of them when None) except the keys in `skip`, and the
        database's time of the read (the next read's starting point, less an overlap)."""
        t = KeyStateRow.__table__
        q = select(t)
        if since is not None:
            q = q.where(or_(t.c.last_probe_at >= since, t.c.admin_changed_at >= since))
        with self.engine.connect() as c:
            now = c.execute(select(func.now())).scalar_one()
            rows = c.execute(q).all()
        return [_to_state(r) for r in rows if r.key not in skip], now

    def end_sessions(self, instance: str) -> int:
        """End every database session of `instance` (its lock connection included): a leader that stopped
        beating loses the lock, and its open transactions end without committing."""
        with self.session.begin() as s:
            n = s.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": application_name(instance)},
            ).scalar_one()
        return int(n)
