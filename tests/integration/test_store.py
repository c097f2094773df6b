"""The state database on SQLite and on the PostgreSQL of this machine: migrations, cycles, growth."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from keywatch.domain import AdminState, Event, Health, ManagedKey, ProbeResult, Secret
from keywatch.state import StateTracker
from keywatch.store.repo import MIGRATIONS, STATE_CHUNK, Store, head_revision


def keys(n: int) -> list[ManagedKey]:
    return [ManagedKey(name=f"k{i}", provider="openai", secret=Secret(f"sk-proj-store-test-{i:08d}-abcd"),
                       secret_ref="env:X", labels={"team": "t"}) for i in range(n)]


def run_cycle(tracker: StateTracker, store: Store, at: datetime, health: dict[str, Health]) -> None:
    transitions = []
    for name, h in health.items():
        t = tracker.apply(ProbeResult(key=name, provider="openai", health=h, checked_at=at, latency_ms=20.0))
        if t:
            transitions.append(t)
    states, rollups = tracker.drain()
    store.save_cycle(states, transitions, rollups)


def in_a_fresh_process(script: str, url: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`script` run with the database URL as its argument, in a new interpreter (what it imports is its own)."""
    return subprocess.run([sys.executable, "-c", script, url], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def count(store: Store, table: str) -> int:
    with store.engine.connect() as c:
        return c.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_migrations_apply_once(store: Store) -> None:
    assert store.upgrade()
    assert store.revision() == head_revision()
    assert store.upgrade() == []


def test_the_newest_revision_is_read_from_the_migration_files_as_alembic_reads_it() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert head_revision() == ScriptDirectory.from_config(cfg).get_current_head()


def test_a_database_at_the_newest_revision_is_opened_without_loading_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    Store(url).upgrade()
    probe = ("import sys; from keywatch.store.repo import Store; applied = Store(sys.argv[1]).upgrade(); "
             "print(applied, sorted(m for m in sys.modules if m.split('.')[0] in ('alembic', 'mako')))")
    out = in_a_fresh_process(probe, url)
    assert out.stdout.split() == ["[]", "[]"], out.stderr


SQLITE_CYCLE = r"""
import sys
from datetime import UTC, datetime
from keywatch.daemon import Daemon  # everything the daemon loads
from keywatch.domain import Health, ProbeResult
from keywatch.state import StateTracker
from keywatch.store.repo import Store
from tests.integration.test_store import keys
store = Store(sys.argv[1])
store.upgrade()
tracker = StateTracker()
tracker.sync_inventory(keys(3))
for _ in range(2):  # the second write updates the rows and adds to the rollups (the upserts' conflict path)
    for k in ("k0", "k1", "k2"):
        tracker.apply(ProbeResult(key=k, provider="openai", health=Health.HEALTHY, checked_at=datetime.now(UTC),
                                  latency_ms=1.0))
    states, rollups = tracker.drain()
    store.write_batch(states, [], rollups, [])
print(len(store.rollups()), sorted(m for m in sys.modules if m.startswith("sqlalchemy.dialects.postgresql")))
"""


def test_a_daemon_on_sqlite_never_loads_postgresql_s_dialect(tmp_path: Path) -> None:
    """Its upserts (states, rollups, usage, marks) take the dialect of the database in use: 2.4 MB less."""
    url = f"sqlite:///{tmp_path / 'k.db'}"
    Store(url).upgrade()  # as after the first start (alembic loads both dialects)
    out = in_a_fresh_process(SQLITE_CYCLE, url)
    assert out.stdout.split() == ["3", "[]"], out.stderr[-2000:]

def test_database_grows_with_changes_not_with_probes(store: Store) -> None:
    store.upgrade()
    tracker = StateTracker()
    ks = keys(20)
    tracker.sync_inventory(ks)
    t0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    for i in range(60):  # five hours of probes every five minutes, nothing changes
        run_cycle(tracker, store, t0 + timedelta(minutes=5 * i), {k.name: Health.HEALTHY for k in ks})
    assert count(store, "key_state") == 20
    assert count(store, "transitions") == 20  # unknown -> healthy, once each
    assert count(store, "probe_rollups") == 20 * 5  # one row per key and hour
    rollups = store.rollups("k0")
    assert sum(r.count for r in rollups) == 60 and rollups[0].hour == t0
    # One key changes: one more transition, nothing else grows.
    run_cycle(tracker, store, t0 + timedelta(hours=5), {"k3": Health.INVALID})
    assert count(store, "transitions") == 21
    assert next((t.old, t.new) for t in store.transitions("k3")) == (Health.HEALTHY, Health.INVALID)


def test_state_round_trips_and_admin_decisions_survive_probe_writes(store: Store) -> None:
    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(2))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    run_cycle(tracker, store, at, {"k0": Health.HEALTHY, "k1": Health.QUOTA_EXHAUSTED})
    store.set_admin_state("k1", AdminState.DISABLED, "operator:alice", "out of credit", at)
    run_cycle(tracker, store, at + timedelta(minutes=5), {"k0": Health.HEALTHY, "k1": Health.QUOTA_EXHAUSTED})
    states = store.load_states()
    assert states["k0"].health is Health.HEALTHY and states["k0"].consecutive == 2
    assert states["k0"].last_probe_at == at + timedelta(minutes=5)
    assert states["k1"].admin_state is AdminState.DISABLED
    assert store.admin_info("k1")["actor"] == "operator:alice"
    # The daemon's per-cycle read holds the decided keys only; k0, never decided about, reads as no decision.
    decided = store.admin_decisions()
    assert list(decided) == ["k1"] and decided["k1"].state is AdminState.DISABLED
    store.set_admin_state("k1", AdminState.ACTIVE, "operator:bob", "paid", at + timedelta(minutes=6))
    assert store.admin_decisions()["k1"].actor == "operator:bob"  # enabled is still a decision, by whom


def test_rollup_upsert_adds_up_across_writes(store: Store) -> None:
    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(1))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    run_cycle(tracker, store, at, {"k0": Health.HEALTHY})
    run_cycle(tracker, store, at + timedelta(minutes=1), {"k0": Health.HEALTHY})
    (r,) = store.rollups("k0")
    assert r.count == 2 and r.latency_sum_ms == 40.0 and r.latency_max_ms == 20.0


def test_a_fleet_larger_than_one_statement_is_written_whole(store: Store) -> None:
    """States, transitions, rollups and events go out in statements of STATE_CHUNK rows: every key of a
    larger fleet is stored, and every change and event of a cycle in which all of them change (the first,
    an outage, a policy acting on every key)."""
    store.upgrade()
    tracker = StateTracker()
    n = 2 * STATE_CHUNK + 7
    tracker.sync_inventory(keys(n))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    for minute in (0, 1):
        run_cycle(tracker, store, at + timedelta(minutes=minute), {f"k{i}": Health.HEALTHY for i in range(n)})
    assert len(store.load_states()) == n
    rollups = store.rollups()
    assert len(rollups) == n and {r.count for r in rollups} == {2}
    assert count(store, "transitions") == n  # unknown -> healthy, each once

    down = at + timedelta(minutes=2)
    transitions = [t for i in range(n) if (t := tracker.apply(ProbeResult(
        key=f"k{i}", provider="openai", health=Health.UNREACHABLE, checked_at=down, latency_ms=10_000.0,
        error_code="timeout", error_message=f"no answer within 10s ({i})")))]
    states, rollups = tracker.drain()
    events = [Event(down, "key_disabled", f"k{i}", "policy:outage", "disabled", {"n": i}) for i in range(n)]
    store.write_batch(states, transitions, rollups, events)
    assert count(store, "transitions") == 2 * n and count(store, "events") == n
    last = store.transitions("k2003", since=down)
    assert [(t.old, t.new, t.at, t.error_code, t.error_message) for t in last] == [
        (Health.HEALTHY, Health.UNREACHABLE, down, "timeout", "no answer within 10s (2003)")]
    assert store.events("k2003") == [events[2003]]


def test_events_are_kept_in_order(store: Store) -> None:
    store.upgrade()
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    store.record_events([Event(at, "disabled", "k0", "policy:dead-keys", "invalid for 3 probes", {"n": 3}),
                         Event(at + timedelta(seconds=1), "enabled", "k0", "operator:bob", "fixed")])
    evs = store.events("k0")
    assert [e.kind for e in evs] == ["enabled", "disabled"] and evs[1].data == {"n": 3}
    assert store.events(since=at + timedelta(seconds=1))[0].actor == "operator:bob"


def test_a_new_sqlite_database_and_its_wal_and_shm_are_readable_by_the_owner_only(tmp_path) -> None:
    import os
    import stat

    old = os.umask(0o022)  # the usual umask outside systemd, which would make files 0644
    try:
        path = tmp_path / "keywatch.db"
        store = Store(f"sqlite:///{path}")
        store.upgrade()
        with store.engine.connect() as c:  # an open connection keeps the -wal and -shm files
            c.execute(text("CREATE TABLE t (x)"))
            c.execute(text("INSERT INTO t VALUES (1)"))
            c.commit()
            files = [path, tmp_path / "keywatch.db-wal", tmp_path / "keywatch.db-shm"]
            modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        store.dispose()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(modes, "0o600"), modes


def test_a_write_behind_a_lock_never_released_fails_instead_of_waiting_forever(store: Store) -> None:
    """A transaction elsewhere holding the key's row (its client stuck, its network gone) costs a write its
    lock timeout, then an error the daemon retries: never a write, and a cycle or action behind it, hung."""
    import threading

    from sqlalchemy.exc import OperationalError

    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(1))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    run_cycle(tracker, store, at, {"k0": Health.INVALID})
    writer = Store(store.url, busy_timeout=0.5)
    state = replace(tracker.snapshot()["k0"], admin_state=AdminState.DISABLED)
    outcome: list[BaseException | None] = []

    def disable() -> None:
        try:
            writer.write_admin(state, "policy:dead", "invalid", at)
            outcome.append(None)
        except BaseException as exc:  # the test reads it
            outcome.append(exc)

    holder = store.engine.connect()
    try:
        if store.engine.dialect.name == "sqlite":
            holder.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            holder.execute(text("SELECT * FROM key_state WHERE key = 'k0' FOR UPDATE"))
        t = threading.Thread(target=disable, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "the write waited on the lock past its timeout"
        assert isinstance(outcome[0], OperationalError), outcome
        assert "k0" not in store.admin_decisions()  # nothing half-written
    finally:
        holder.rollback()
        holder.close()
    writer.write_admin(state, "policy:dead", "invalid", at)  # the lock gone, the retry goes through
    assert store.admin_decisions()["k0"].state is AdminState.DISABLED
    writer.dispose()


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)  # the migration lock is PostgreSQL's
def test_instances_starting_together_wait_for_each_others_migration_past_the_lock_timeout(store: Store) -> None:
    """The migration lock is the one wait without a timeout: a second instance waits for the first one's
    migration however long it takes, instead of failing at start."""
    import threading
    import time

    from keywatch.cluster.store import MIGRATION_LOCK_KEY, migrating

    second = Store(store.url, busy_timeout=0.2)
    holder = store.engine.connect()
    holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    holder.commit()
    done: list[BaseException | None] = []

    def start() -> None:
        try:
            with migrating(second.engine):
                second.upgrade()
            done.append(None)
        except BaseException as exc:  # the test reads it
            done.append(exc)

    t = threading.Thread(target=start, daemon=True)
    t.start()
    time.sleep(1.0)  # five lock timeouts
    assert t.is_alive() and not done  # still waiting, not failed
    holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
    holder.commit()
    holder.close()
    t.join(30)
    assert done == [None]
    assert second.revision() == head_revision()
    second.dispose()


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)  # SQLite serialises the two transactions whole
def test_a_new_keys_row_written_meanwhile_by_another_transaction_is_updated_not_refused(store: Store) -> None:
    """The writer's batch and a containment may both write a key's first row: the one that commits second
    updates the row (probe columns only; the decision stays), instead of failing on the primary key."""
    import threading

    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(1))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    tracker.apply(ProbeResult(key="k0", provider="openai", health=Health.INVALID, checked_at=at, latency_ms=5.0))
    state = tracker.snapshot()["k0"]
    other = Store(store.url)
    errors: list[BaseException] = []
    with store.session.begin() as first:  # the containment: the row inserted, not yet committed
        store._save_cycle(first, [replace(state, admin_state=AdminState.DISABLED)], [], [])

        def writer() -> None:
            try:
                other.save_cycle([replace(state, consecutive=7)], [], [])  # waits on the row, then conflicts
            except BaseException as exc:  # the test reads it
                errors.append(exc)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        t.join(0.5)
        assert t.is_alive()  # waiting for the first transaction
    t.join(30)
    assert errors == []
    row = store.load_states()["k0"]
    assert row.consecutive == 7 and row.health is Health.INVALID and row.admin_state is AdminState.DISABLED
    other.dispose()


APART = r"""
import sys
from keywatch.store.repo import MigrationFailed, Store
try:
    applied = Store(sys.argv[1]).upgrade_apart()
    print(len(applied) > 0, sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'mako'}))
except MigrationFailed as exc:
    print("failed:", exc)
"""


def test_the_daemon_migrates_in_a_child_process_and_keeps_alembic_out_of_its_memory(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"

    def apart() -> str:
        return in_a_fresh_process(APART, url, timeout=120).stdout.strip()

    assert apart() == "True []"  # migrated (a new file), and neither alembic nor mako loaded here
    store = Store(url)
    assert store.revision() == head_revision()
    assert (tmp_path / "k.db").stat().st_mode & 0o777 == 0o600  # created by the child as the daemon would
    # A database from a newer keywatch: the child's error, with the revision it does not know, comes back.
    with store.engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed1234'"))
    store.dispose()
    out = apart()
    assert out.startswith("failed:") and "f00dfeed1234" in out, out


def test_the_writer_keeps_nothing_of_a_batch_once_it_is_stored(store: Store) -> None:
    """Between cycles the writer waits for the next batch: the last one (every probed key's rollups, about
    160 bytes a key) must not stay in memory meanwhile."""
    import gc

    from keywatch.domain import Rollup
    from keywatch.store.writer import DatabaseWriter

    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(50))
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for k in tracker.snapshot():
        tracker.apply(ProbeResult(key=k, provider="openai", health=Health.HEALTHY, checked_at=at, latency_ms=20.0))
    states, rollups = tracker.drain()
    writer = DatabaseWriter(store, on_status=lambda status: None, on_drop=lambda kind, n: None)
    writer.start()
    try:
        writer.submit(states, (), rollups).result(timeout=30)
        del states, rollups
        gc.collect()
        assert [o for o in gc.get_objects() if isinstance(o, Rollup)] == []
    finally:
        writer.close(10)
    assert count(store, "key_state") == 50


def test_a_key_whose_row_was_removed_meanwhile_is_written_whole_at_the_next_cycle(store: Store) -> None:
    """A cycle's states are updated in one executemany; a chunk in which the database changed fewer rows than
    it was given (a row deleted by hand, a new key beside known ones) gets its missing rows inserted."""
    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(5))
    at = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    everyone = {f"k{i}": Health.HEALTHY for i in range(5)}
    run_cycle(tracker, store, at, everyone)
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM key_state WHERE key = 'k2'"))
    tracker.sync_inventory(keys(6))  # and a new key joins
    run_cycle(tracker, store, at + timedelta(minutes=1), {**everyone, "k5": Health.INVALID})
    states = store.load_states()
    assert sorted(states) == [f"k{i}" for i in range(6)]
    assert states["k2"].health is Health.HEALTHY and states["k2"].consecutive == 2
    assert states["k2"].fingerprint == tracker.snapshot()["k2"].fingerprint
    assert states["k5"].health is Health.INVALID and states["k5"].last_probe_at == at + timedelta(minutes=1)


def test_times_are_stored_as_the_orm_stores_them_and_queries_by_time_find_them(store: Store) -> None:
    """The cycle's statements hand the driver their values directly: a time with or without microseconds, in
    UTC or in another zone, is stored so that it reads back as the same instant and compares as the ORM's
    own queries compare it (a rollup's hour, `since`)."""
    from datetime import timezone

    from keywatch.domain import KeyState

    store.upgrade()
    tracker = StateTracker()
    tracker.sync_inventory(keys(3))
    times = {"k0": datetime(2026, 3, 1, 10, 7, 3, 123456, tzinfo=UTC),
             "k1": datetime(2026, 3, 1, 10, 7, 3, tzinfo=UTC),
             "k2": datetime(2026, 3, 1, 12, 7, 3, 5, tzinfo=timezone(timedelta(hours=2)))}
    for name, at in times.items():  # twice: the first write inserts, the second updates
        for _ in range(2):
            tracker.apply(ProbeResult(key=name, provider="openai", health=Health.HEALTHY, checked_at=at,
                                      latency_ms=20.0))
    states, rollups = tracker.drain()
    store.save_cycle(states, [], rollups)
    store.save_cycle(states, [], rollups)
    stored = store.load_states()
    for name, at in times.items():
        assert stored[name].last_probe_at == at and stored[name].last_probe_at.tzinfo is UTC
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert {r.key for r in store.rollups(since=hour)} == {"k0", "k1", "k2"}
    assert store.rollups(since=hour + timedelta(seconds=1)) == []
    # The same state written through the ORM's own statement is stored identically, column for column.
    with store.engine.connect() as c:
        fast = c.execute(text("SELECT * FROM key_state WHERE key = 'k0'")).one()
    with store.session.begin() as s:
        s.execute(text("DELETE FROM key_state WHERE key = 'k0'"))
    store.write_admin(KeyState(**{f: getattr(stored["k0"], f) for f in KeyState.__slots__}), "x", "y", hour)
    with store.engine.connect() as c:
        orm = c.execute(text("SELECT * FROM key_state WHERE key = 'k0'")).one()
    columns = [c for c in fast._fields if not c.startswith("admin_")]
    assert [getattr(fast, c) for c in columns] == [getattr(orm, c) for c in columns]


def test_the_shortcut_for_times_is_not_taken_where_it_would_store_other_text() -> None:
    """The cycle's statements convert UTC times without SQLAlchemy's general path only where the result is
    the same as SQLAlchemy's; a database whose storage differs gets SQLAlchemy's own conversion."""
    from sqlalchemy.dialects import sqlite

    from keywatch.store.bulk import _utc_datetime

    at = datetime(2026, 3, 1, 10, 7, 3, 5, tzinfo=UTC)
    def as_sqlalchemy(d: datetime) -> str:
        return d.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    assert _utc_datetime(sqlite.dialect(), as_sqlalchemy)(at) == "2026-03-01 10:07:03.000005"
    def other(d: datetime) -> str:
        return d.strftime("%Y%m%dT%H%M%S")
    assert _utc_datetime(sqlite.dialect(), other)(at) == "20260301T100703"


def test_while_the_database_is_down_the_writer_queue_grows_with_keys_and_hours_not_with_cycles(
        store: Store, monkeypatch) -> None:
    """Each cycle's rollups are queued as they come; while writes fail, further cycles are summed into them
    per key, hour and health, past the limit the oldest hours go first, and once the database is back every
    probe is counted."""
    import time

    from keywatch.store.writer import DatabaseWriter

    store.upgrade()
    down = {"on": True}
    real = store.write_batch

    def write_batch(*args, **kwargs):
        if down["on"]:
            raise RuntimeError("database unavailable")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "write_batch", write_batch)
    drops: list[tuple[str, int]] = []
    writer = DatabaseWriter(store, on_status=lambda status: None, on_drop=lambda kind, n: drops.append((kind, n)),
                            limit=12, first_pause=0.05, max_pause=0.05)
    tracker = StateTracker()
    tracker.sync_inventory(keys(5))
    hour = datetime(2026, 3, 1, 10, tzinfo=UTC)
    writer.start()
    try:
        for cycle in range(6):  # three cycles in each of two hours
            at = hour + timedelta(minutes=20 * cycle)
            for k in tracker.snapshot():
                tracker.apply(ProbeResult(key=k, provider="openai", health=Health.HEALTHY, checked_at=at,
                                          latency_ms=10.0 + cycle))
            states, rollups = tracker.drain()
            writer.submit(states, (), rollups, wait=False)
            time.sleep(0.1)  # a failed attempt or two in between
            assert writer.pending()["rollups"] <= 12
        assert writer.pending()["rollups"] == 10 and drops == []  # 5 keys x 2 hours
        # A third hour puts it over the limit: the first hour's rows go.
        at = hour + timedelta(hours=2)
        for k in tracker.snapshot():
            tracker.apply(ProbeResult(key=k, provider="openai", health=Health.HEALTHY, checked_at=at, latency_ms=1.0))
        states, rollups = tracker.drain()
        writer.submit(states, (), rollups, wait=False)
        assert writer.pending()["rollups"] == 12 and drops == [("rollups", 3)]
        down["on"] = False
        writer.submit(wait=True).result(timeout=30)
    finally:
        writer.close(10)
    stored = {(r.key, r.hour): (r.count, r.latency_sum_ms, r.latency_max_ms) for r in store.rollups()}
    assert stored[("k0", hour + timedelta(hours=1))] == (3, 13.0 + 14.0 + 15.0, 15.0)
    assert stored[("k4", hour + timedelta(hours=2))] == (1, 1.0, 1.0)
    assert sum(1 for k, h in stored if h == hour) == 2  # three of the first hour's five dropped, oldest first
