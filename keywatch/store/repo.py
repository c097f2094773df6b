"""The repository: every database read and write keywatch makes goes through here.

Calls are synchronous; the daemon runs them in a worker thread so a slow database never stalls probing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, bindparam, create_engine, event, func, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from keywatch.domain import AdminInfo, AdminState, Event, Health, KeyState, RateLimit, Rollup, Transition
from keywatch.store.bulk import Bulk
from keywatch.store.models import (
    EventRow,
    KeyStateRow,
    ProbeRollupRow,
    ProviderOutageRow,
    TransitionRow,
)

MIGRATIONS = Path(__file__).parent / "migrations"


def default_database_url() -> str:
    state_dir = os.environ.get("STATE_DIRECTORY")
    base = Path(state_dir.split(":")[0]) if state_dir else Path.cwd()
    return f"sqlite:///{base / 'keywatch.db'}"


STATE_CHUNK = 1000  # rows (key states, transitions, rollups, events) written per statement


def _chunks(rows: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """`rows` STATE_CHUNK at a time: at thousands of keys one statement's parameter rows would be the
    cycle's largest allocation (same transaction, same result)."""
    for i in range(0, len(rows), STATE_CHUNK):
        yield rows[i:i + STATE_CHUNK]
RECYCLE_ON = ("readonly", "read-only", "disk i/o error", "unable to open database file")


class MigrationFailed(RuntimeError):
    """The migration child process could not bring the database to the newest revision (its error text)."""


class DatabaseLost(RuntimeError):
    """The SQLite file the daemon opened is gone or was replaced: writing on would start over silently."""


def make_engine(url: str, busy_timeout: float = 30.0, may_create: Callable[[], bool] | None = None) -> Engine:
    """`busy_timeout`: how long a statement waits for a lock another connection holds (SQLite's busy
    timeout; PostgreSQL's lock_timeout, in seconds).
    `may_create`: asked before each new SQLite connection; when it answers False the file must exist
    (a connection never creates an empty database in its place)."""
    if url.startswith("sqlite"):
        # A file database opens a connection per use (cheap for SQLite): none outlives the cause of an error.
        # A connection opened while the file was read-only keeps the file's shared memory read-only for
        # every connection of the process while it stays open, so a pool would never recover from it.
        in_memory = url.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://") or ":memory:" in url
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": busy_timeout},
                               **({} if in_memory else {"poolclass": NullPool}))

        @event.listens_for(engine, "do_connect")
        def _open_existing(_dialect: Any, _rec: Any, cargs: list[Any], cparams: dict[str, Any]) -> None:
            path = engine.url.database
            if not path or path == ":memory:" or cparams.get("uri"):
                return
            if may_create is None or may_create():
                create_private(path)
                return
            target = cargs[0] if cargs else cparams.pop("database", path)
            cargs[:] = [f"file:{quote(str(target))}?mode=rw"]
            cparams["uri"] = True

        @event.listens_for(engine, "handle_error")
        def _recycle(ctx: Any) -> None:
            # A connection opened while the file was read-only, or on a file since removed, stays broken
            # after the cause is fixed: treat these errors like a lost connection, so the pool is recycled.
            if any(m in str(ctx.original_exception).lower() for m in RECYCLE_ON):
                ctx.is_disconnect = True
                # SQLAlchemy leaves the cursor of a "disconnect" open; its statement would keep the closed
                # connection (and the file's read-only shared memory) alive until garbage collection.
                cursor = getattr(ctx.execution_context, "cursor", None)
                if cursor is not None:
                    with contextlib.suppress(Exception):
                        cursor.close()

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)

    @event.listens_for(engine, "do_connect")
    def _lock_timeout(_dialect: Any, _rec: Any, _cargs: list[Any], cparams: dict[str, Any]) -> None:
        # A row lock held by a transaction that never ends (its client stuck, its network gone) would
        # otherwise hold a write, and whatever waits for it, forever: the statement fails and is retried.
        # The URL's own `options` are kept; a later `-c lock_timeout` in them (or SET) wins.
        cparams["options"] = f"-c lock_timeout={round(busy_timeout * 1000)} {cparams.get('options', '')}".strip()

    return engine


def without_lock_timeout(conn: Connection) -> None:
    """For the current transaction, wait for locks as long as it takes (migrations, the migration lock:
    another instance's schema change or its transactions may take longer than a write may wait)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL lock_timeout = 0"))


def db_error(exc: BaseException) -> str:
    """A database error in one line, without statement parameters (they may hold labels or messages)."""
    orig = getattr(exc, "orig", None)
    return f"{type(exc).__name__}: {orig if orig is not None else exc}".splitlines()[0][:300]


def _upgrade_child() -> None:
    """The migration child process (`Store.upgrade_apart`): the URL on stdin, one JSON line on stdout."""
    try:
        store = Store(json.load(sys.stdin)["url"])
        answer: dict[str, Any] = {"applied": store.upgrade()}
        store.dispose()
    except Exception as exc:
        answer = {"error": db_error(exc)}
    print(json.dumps(answer), flush=True)
    sys.exit(1 if "error" in answer else 0)


def dialect_insert(engine: Engine, table: Any) -> Any:
    """The database's own INSERT for `table`, which has ON CONFLICT. The dialect module is imported on first
    use: a daemon on SQLite never loads PostgreSQL's (2.4 MB)."""
    dialect = engine.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise RuntimeError(f"unsupported database {dialect}: use SQLite or PostgreSQL")
    return insert(table)


def create_private(path: str | Path) -> None:
    """Create a missing SQLite file readable and writable by its owner only (0600), whatever the umask:
    the database holds key names, fingerprints and audit events. SQLite gives the -wal and -shm files it
    creates next to it the same mode. An existing file is left as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:  # exists already, or cannot be created: SQLite opens it or reports why not
        return
    os.close(fd)


def head_revision() -> str | None:
    """The newest migration's revision, read from the `revision = ...` and `down_revision = ...` lines of
    the migration files; None unless they make one chain with one head (then alembic decides)."""
    down: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        rev = re.search(r"^revision\s*=\s*[\"']([^\"']+)[\"']\s*$", source, re.M)
        parent = re.search(r"^down_revision\s*=\s*(?:[\"']([^\"']+)[\"']|None)\s*$", source, re.M)
        if rev is None and parent is None:
            continue  # not a migration (__init__.py)
        if rev is None or parent is None:
            return None
        down[rev.group(1)] = parent.group(1)
    heads = set(down) - set(down.values())
    return heads.pop() if len(heads) == 1 else None


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


class Store:
    def __init__(self, url: str, busy_timeout: float = 30.0) -> None:
        self.url = url
        self.may_create = True
        self.engine = make_engine(url, busy_timeout, lambda: self.may_create)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        self._identity: tuple[int, int] | None = None
        self._bulks: dict[str, Bulk] = {}

    # -- the file under a running daemon ----------------------------------------------------------
    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or None (PostgreSQL, in-memory)."""
        if self.engine.dialect.name != "sqlite":
            return None
        db = self.engine.url.database
        return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None

    def pin_file(self) -> None:
        """Remember which file this is and never create it again: from now on a removed or replaced file is
        an error (`check_file`), not a fresh empty database."""
        path = self.sqlite_path
        if path is None:
            return
        st = path.stat()
        self._identity = (st.st_dev, st.st_ino)
        self.may_create = False

    def check_file(self) -> None:
        """Raise DatabaseLost when the pinned SQLite file was removed or replaced."""
        path = self.sqlite_path
        if path is None or self._identity is None:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DatabaseLost(f"{path} was removed") from None
        except OSError as exc:
            raise DatabaseLost(f"{path} cannot be checked: {exc.strerror}") from None
        if (st.st_dev, st.st_ino) != self._identity:
            raise DatabaseLost(f"{path} was replaced by another file")

    def reset_connections(self) -> None:
        """Close every pooled connection: the next use opens a fresh one (after a write error, a connection
        opened read-only or on a locked file would otherwise keep failing after the cause is fixed)."""
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def revision(self) -> str | None:
        """The revision the database is at (alembic's version table), or None: none yet, or several."""
        try:
            with self.engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except Exception:  # no version table yet (or no database): alembic finds out and says why
            return None
        return versions[0] if len(versions) == 1 else None

    def upgrade(self) -> list[str]:
        """Apply pending migrations; returns the revisions applied. A database already at the newest one is
        recognised without loading alembic (a restart, a CLI command: about 0.3 s and 5 MB saved)."""
        head = head_revision()
        if head is not None and self.revision() == head:
            return []
        from keywatch.logging import without_modules

        with without_modules("pygments"):  # mako's template-error highlighting: 6 MB no migration uses
            from alembic import command
            from alembic.config import Config as AlembicConfig
            from alembic.runtime.migration import MigrationContext
            from alembic.script import ScriptDirectory

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        script = ScriptDirectory.from_config(cfg)
        with self.engine.begin() as conn:
            without_lock_timeout(conn)
            current = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        if current == script.get_current_head():
            return []
        return [r.revision for r in script.iterate_revisions("head", current)][::-1]

    def upgrade_apart(self) -> list[str]:
        """`upgrade()` in a short-lived child process, for a long-running daemon: alembic and mako stay out
        of its memory (6.5 MB of RSS it would otherwise keep to the next restart). A database at the newest
        revision costs no child; an in-memory one, which only this process sees, is migrated here. Raises
        MigrationFailed with the child's error."""
        head = head_revision()
        if head is not None and self.revision() == head:
            return []
        if self.engine.dialect.name == "sqlite" and self.sqlite_path is None:
            return self.upgrade()
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        # The URL on stdin, not in argv: it may hold a password, and every user of the machine sees argv.
        child = "from keywatch.store.repo import _upgrade_child; _upgrade_child()"
        proc = subprocess.run([sys.executable, "-c", child], input=json.dumps({"url": self.url}), env=env,
                              capture_output=True, text=True, check=False)
        try:
            answer = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise MigrationFailed(f"the migration process failed: {tail[:300]}") from None
        if "error" in answer:
            raise MigrationFailed(answer["error"])
        return list(answer["applied"])

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- key state ------------------------------------------------------------------------------
    def load_states(self) -> dict[str, KeyState]:
        with self.session() as s:
            return {r.key: _to_state(r) for r in s.scalars(select(KeyStateRow))}

    def save_cycle(
        self,
        states: Sequence[KeyState],
        transitions: Sequence[Transition],
        rollups: Iterable[Rollup],
    ) -> None:
        """One transaction per cycle: current states, the changes, and the hourly rollups."""
        with self.session.begin() as s:
            self._save_cycle(s, states, transitions, rollups)

    def _save_cycle(
        self, s: Session, states: Sequence[KeyState], transitions: Sequence[Transition], rollups: Iterable[Rollup]
    ) -> None:
        states = list(states)
        conn = s.connection()
        update_rows = self._bulk("probe_update", lambda: (_PROBE_UPDATE, (*_PROBE_COLUMNS, "b_key")))
        for chunk in _chunks(states):
            # The rows are updated first; only a chunk in which the database counts fewer rows than were
            # given (a new key, a row removed meanwhile) is looked up, and its missing rows inserted.
            changed = update_rows.run(conn, [_row_values(x, probe_only=True) for x in chunk])
            if changed == len(chunk):
                continue
            existing = set(s.scalars(select(KeyStateRow.key).where(KeyStateRow.key.in_([x.key for x in chunk]))))
            new_rows = [_row_values(x) for x in chunk if x.key not in existing]
            if new_rows:  # an upsert: another transaction (a containment, an action) may write the row first
                s.execute(self._insert_states(), new_rows)
            if changed is None:  # the driver does not count an executemany's rows: the update is done again
                update_rows.run(conn, [_row_values(x, probe_only=True) for x in chunk if x.key in existing])
            del new_rows
        insert_transitions = self._bulk("transition_insert",
                                        lambda: (TransitionRow.__table__.insert(), _TRANSITION_COLUMNS))
        for part in _chunks(transitions):  # a first cycle, or an outage: every key at once
            insert_transitions.run(conn, [
                {"key": t.key, "provider": t.provider, "old": str(t.old), "new": str(t.new), "at": t.at,
                 "http_status": t.http_status, "error_code": t.error_code, "error_message": t.error_message}
                for t in part
            ])
        self._upsert_rollups(s, list(rollups))

    def write_batch(
        self,
        states: Sequence[KeyState],
        transitions: Sequence[Transition],
        rollups: Iterable[Rollup],
        events: Sequence[Event],
    ) -> None:
        """The daemon's writer: a cycle's states, transitions, rollups and events in one transaction, so a
        retried batch is never half written twice."""
        with self.session.begin() as s:
            self._save_cycle(s, states, transitions, rollups)
            self._add_events(s, events)

    def _insert_states(self) -> Any:
        """New keys' rows; a row written meanwhile by another transaction gets the probe columns, as an
        existing row would (its admin decision is kept)."""
        ins = dialect_insert(self.engine, KeyStateRow.__table__)
        return ins.on_conflict_do_update(index_elements=["key"],
                                         set_={c: ins.excluded[c] for c in _PROBE_COLUMNS})

    def _upsert_rollups(self, s: Session, rollups: list[Rollup]) -> None:
        if not rollups:
            return
        upsert = self._bulk("rollup_upsert", self._rollup_upsert)
        conn = s.connection()
        for part in _chunks(rollups):  # one parameter row per key each cycle
            upsert.run(conn, [{"key": r.key, "hour": r.hour, "health": r.health, "count": r.count,
                               "latency_sum_ms": r.latency_sum_ms, "latency_max_ms": r.latency_max_ms}
                              for r in part])

    def _rollup_upsert(self) -> tuple[Any, tuple[str, ...]]:
        table = ProbeRollupRow.__table__
        ins = dialect_insert(self.engine, table)
        stmt = ins.on_conflict_do_update(
            index_elements=["key", "hour", "health"],
            set_={
                "count": table.c.count + ins.excluded.count,
                "latency_sum_ms": table.c.latency_sum_ms + ins.excluded.latency_sum_ms,
                "latency_max_ms": func.max(table.c.latency_max_ms, ins.excluded.latency_max_ms)
                if self.engine.dialect.name == "sqlite"
                else func.greatest(table.c.latency_max_ms, ins.excluded.latency_max_ms),
            },
        )
        return stmt, ("key", "hour", "health", "count", "latency_sum_ms", "latency_max_ms")

    def _bulk(self, name: str, build: Callable[[], tuple[Any, Sequence[str]]]) -> Bulk:
        """The cycle's statements, compiled once for this database (store/bulk.py)."""
        bulk = self._bulks.get(name)
        if bulk is None:
            stmt, names = build()
            bulk = self._bulks[name] = Bulk(stmt, self.engine.dialect, names)
        return bulk

    def set_admin_state(self, key: str, state: AdminState, actor: str, reason: str, at: datetime) -> None:
        with self.session.begin() as s:
            s.execute(
                update(KeyStateRow)
                .where(KeyStateRow.key == key)
                .values(admin_state=str(state), admin_actor=actor, admin_reason=reason, admin_changed_at=at)
            )

    def admin_decisions(self) -> dict[str, AdminInfo]:
        """The admin decision of every key that has one, as stored: the daemon re-reads it each cycle, so
        `keywatch disable` works while the daemon runs. A key nothing was ever decided about (active, no
        actor, no time) is left out: it reads as no decision, and a large fleet's read is the decided few."""
        cols = (KeyStateRow.key, KeyStateRow.admin_state, KeyStateRow.admin_actor, KeyStateRow.admin_reason,
                KeyStateRow.admin_changed_at)
        decided = or_(KeyStateRow.admin_state != str(AdminState.ACTIVE), KeyStateRow.admin_actor.is_not(None),
                      KeyStateRow.admin_changed_at.is_not(None))
        with self.session() as s:
            return {
                k: AdminInfo(AdminState(state), actor, reason, changed)
                for k, state, actor, reason, changed in s.execute(select(*cols).where(decided))
            }

    def write_admin(self, state: KeyState, actor: str, reason: str, at: datetime) -> None:
        """Set the admin decision, creating the key's row first if the daemon never stored it."""
        self.save_cycle([state], [], [])
        self.set_admin_state(state.key, state.admin_state, actor, reason[:2000], at)

    # -- provider outages: one survives a restart instead of being announced twice --------------------
    def open_outages(self) -> dict[str, tuple[datetime, str, int, int]]:
        """provider -> (started_at, scope, failed, total) of every outage not ended."""
        with self.session() as s:
            rows = s.scalars(select(ProviderOutageRow).where(ProviderOutageRow.ended_at.is_(None)))
            return {r.provider: (r.started_at, r.scope, r.failed, r.total) for r in rows}

    def save_outages(self, started: Iterable[tuple[str, str, int, int]], ended: Iterable[str], now: datetime) -> None:
        """Open an outage for each (provider, scope, failed, total) in `started`; end those of `ended`."""
        with self.session.begin() as s:
            for provider, scope, failed, total in started:
                s.add(ProviderOutageRow(provider=provider, scope=scope, started_at=now, ended_at=None,
                                        failed=failed, total=total))
            for provider in ended:
                s.execute(
                    update(ProviderOutageRow)
                    .where(ProviderOutageRow.provider == provider, ProviderOutageRow.ended_at.is_(None))
                    .values(ended_at=now)
                )

    def admin_info(self, key: str) -> dict[str, Any] | None:
        with self.session() as s:
            row = s.get(KeyStateRow, key)
            if row is None:
                return None
            return {"state": row.admin_state, "actor": row.admin_actor, "reason": row.admin_reason,
                    "changed_at": row.admin_changed_at}

    # -- history --------------------------------------------------------------------------------
    def transitions(self, key: str | None = None, since: datetime | None = None, limit: int = 1000) -> list[Transition]:
        q = select(TransitionRow).order_by(TransitionRow.at.desc(), TransitionRow.id.desc()).limit(limit)
        if key:
            q = q.where(TransitionRow.key == key)
        if since:
            q = q.where(TransitionRow.at >= since)
        with self.session() as s:
            return [
                Transition(r.key, r.provider, Health(r.old), Health(r.new), r.at, r.http_status, r.error_code,
                           r.error_message)
                for r in s.scalars(q)
            ]

    def record_events(self, events: Sequence[Event]) -> None:
        if not events:
            return
        with self.session.begin() as s:
            self._add_events(s, events)

    @staticmethod
    def _add_events(s: Session, events: Sequence[Event]) -> None:
        for part in _chunks(events):  # a policy acting on every key: one event each
            s.execute(
                EventRow.__table__.insert(),
                [{"at": e.at, "kind": e.kind, "key": e.key, "actor": e.actor, "message": e.message,
                  "data": e.data} for e in part],
            )

    def events(self, key: str | None = None, since: datetime | None = None, limit: int = 1000) -> list[Event]:
        q = select(EventRow).order_by(EventRow.at.desc(), EventRow.id.desc()).limit(limit)
        if key:
            q = q.where(EventRow.key == key)
        if since:
            q = q.where(EventRow.at >= since)
        with self.session() as s:
            return [Event(r.at, r.kind, r.key, r.actor, r.message, r.data or {}) for r in s.scalars(q)]

    def rollups(self, key: str | None = None, since: datetime | None = None) -> list[Rollup]:
        q = select(ProbeRollupRow).order_by(ProbeRollupRow.hour)
        if key:
            q = q.where(ProbeRollupRow.key == key)
        if since:
            q = q.where(ProbeRollupRow.hour >= since)
        with self.session() as s:
            return [Rollup(r.key, r.hour, r.health, r.count, r.latency_sum_ms, r.latency_max_ms) for r in s.scalars(q)]


def _row_values(st: KeyState, probe_only: bool = False) -> dict[str, Any]:
    rl = st.ratelimit
    values: dict[str, Any] = {
        "key": st.key, "provider": st.provider, "fingerprint": st.fingerprint, "masked": st.masked,
        "health": str(st.health), "health_since": st.health_since, "last_probe_at": st.last_probe_at,
        "consecutive": st.consecutive, "http_status": st.http_status, "error_code": st.error_code,
        "error_message": st.error_message, "latency_ms": st.latency_ms,
        "requests_remaining": rl.requests_remaining if rl else None,
        "tokens_remaining": rl.tokens_remaining if rl else None,
        "compromised": st.compromised, "compromise_reason": st.compromise_reason, "labels": st.labels,
    }
    if probe_only:
        values["b_key"] = values.pop("key")  # the row to update (_PROBE_UPDATE), not a column to set
    else:
        values["admin_state"] = str(st.admin_state)
    return values


# The columns a probe sets: all but the key and the admin decision (the operator's and the policies').
_PROBE_COLUMNS = tuple(c.name for c in KeyStateRow.__table__.c if c.name != "key" and not c.name.startswith("admin_"))
# A transition's: all but its generated id.
_TRANSITION_COLUMNS = tuple(c.name for c in TransitionRow.__table__.c if c.name != "id")

# A cycle's probe results, one executemany on the table itself: the ORM's bulk update by primary key does
# the same statement with several times the CPU per row (at 10,000 keys, most of a cycle's write).
_PROBE_UPDATE = KeyStateRow.__table__.update().where(KeyStateRow.__table__.c.key == bindparam("b_key"))


def _to_state(r: KeyStateRow) -> KeyState:
    rl = (
        RateLimit(requests_remaining=r.requests_remaining, tokens_remaining=r.tokens_remaining)
        if r.requests_remaining is not None or r.tokens_remaining is not None
        else None
    )
    return KeyState(
        key=r.key, provider=r.provider, fingerprint=r.fingerprint, masked=r.masked, health=Health(r.health),
        admin_state=AdminState(r.admin_state), health_since=r.health_since, last_probe_at=r.last_probe_at,
        consecutive=r.consecutive, http_status=r.http_status, error_code=r.error_code,
        error_message=r.error_message, latency_ms=r.latency_ms, ratelimit=rl, compromised=r.compromised,
        compromise_reason=r.compromise_reason, labels=dict(r.labels or {}),
    )
