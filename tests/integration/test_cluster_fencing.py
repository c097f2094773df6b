"""Leadership and fencing against the real PostgreSQL, two instances in this process, heartbeats driven by
the test: one leader at a time, the token goes up at each takeover, and a leader that was frozen past the
timeout (its heartbeats stopped) can record nothing once it resumes, even while it still believes it leads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from keywatch.cluster.config import ClusterSettings
from keywatch.cluster.leadership import PgLeadership
from keywatch.domain import Event
from keywatch.runtime import NotLeader, attach_leadership, confirm_leading, fence
from keywatch.store.repo import Store
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.postgres

SETTINGS = {"heartbeat": "100ms", "takeover_timeout": "600ms"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def member(url: str, name: str, changes: list[tuple[str, bool]]) -> tuple[Store, PgLeadership]:
    store = Store(url)
    lead = PgLeadership(
        store.engine,
        ClusterSettings(instance=name, **SETTINGS),
        on_change=lambda leading: changes.append((name, leading)),
    )
    attach_leadership(store.engine, lead)
    return store, lead


def record(store: Store, message: str) -> None:
    """An acting path's record: the fencing check and the write in one transaction."""
    with store.session.begin() as s:
        fence(s)
        store._add_events(s, [Event(datetime.now(UTC), "action_started", "k1", "test", message)])


def test_one_leader_a_token_per_term_and_a_resumed_leader_fenced(pg_url: str) -> None:
    Store(pg_url).upgrade()
    changes: list[tuple[str, bool]] = []
    (sa, a), (sb, b) = member(pg_url, "a", changes), member(pg_url, "b", changes)
    try:
        a.beat()
        b.beat()
        assert (a.leading, b.leading, a.token) == (True, False, 1)
        assert b.leader_name == "a" and b.members == ["a", "b"]
        record(sa, "by a, term 1")
        with pytest.raises(NotLeader):
            record(sb, "by b, not leading")
        # a freezes: no heartbeat from it; b deposes it after the timeout and takes over at the next beat.
        deadline = time.monotonic() + 5
        while not b.leading and time.monotonic() < deadline:
            b.beat()
            time.sleep(0.1)
        assert b.leading and b.token == 2
        assert not a.leading  # its own clock says the term is unconfirmed: nothing acts
        assert confirm_leading(sa.session) is False
        # Even a leader that believes it still leads (resumed right after a confirmation) is refused by the
        # token in the database, and steps down.
        a._confirmed_at = time.monotonic()
        with pytest.raises(NotLeader, match="superseded"):
            record(sa, "by a, after its term")
        assert a.token is None and ("a", False) in changes
        record(sb, "by b, term 2")
        a.beat()  # its sessions were ended by the takeover: it reconnects, and follows
        assert (a.leading, a.leader_name, b.leading) == (False, "b", True)
        messages = sorted(e.message for e in sb.events(limit=10))
        assert messages == ["by a, term 1", "by b, term 2"]
    finally:
        a.close()
        b.close()
        sa.dispose()
        sb.dispose()


def test_a_leader_that_leaves_hands_over_at_the_next_heartbeat(pg_url: str) -> None:
    Store(pg_url).upgrade()
    changes: list[tuple[str, bool]] = []
    (sa, a), (sb, b) = member(pg_url, "a", changes), member(pg_url, "b", changes)
    try:
        a.beat()
        b.beat()
        assert a.leading and not b.leading
        a.close()  # a clean stop: the lock goes with its session, its member row is removed
        b.beat()
        assert b.leading and b.token == 2 and b.members == ["b"]
    finally:
        b.close()
        sa.dispose()
        sb.dispose()


def claim_of(store: Store, row: int) -> tuple[str, int, str]:
    with store.engine.connect() as c:
        r = c.exec_driver_sql(f"SELECT claimed_by, claimed_token, status FROM alert_outbox WHERE id = {row}").one()
    return (r[0], r[1], r[2])


def test_every_acting_record_is_fenced_in_its_own_transaction(pg_url: str) -> None:
    """An alert decision (its state and messages), an outbox send's claim, a rotation step, a usage pull and
    a budget mark each check the token in the transaction that records them: the deposed leader records none
    of them, its successor records all."""
    from decimal import Decimal

    from keywatch.domain import ManagedKey, Secret
    from keywatch.notify.outbox import AlertDB, AlertState
    from keywatch.rotation.machine import new_rotation
    from keywatch.rotation.store import RotationStore
    from keywatch.usage.rows import PullResult
    from keywatch.usage.store import UsageStore

    Store(pg_url).upgrade()
    changes: list[tuple[str, bool]] = []
    (sa, a), (sb, b) = member(pg_url, "a", changes), member(pg_url, "b", changes)
    try:
        a.beat()
        b.beat()
        now = datetime.now(UTC)
        db_a, db_b = AlertDB(sa.session), AlertDB(sb.session)
        [row] = db_a.commit([], [("ops", {"title": "t"})], now)
        assert db_a.claim(row, now) is True  # a leads: its claim is recorded with its token
        assert claim_of(sa, row) == ("a", 1, "pending")
        # a freezes; b takes over; a believes it still leads.
        deadline = time.monotonic() + 5
        while not b.leading and time.monotonic() < deadline:
            b.beat()
            time.sleep(0.1)
        assert b.leading and b.token == 2
        a._confirmed_at, a._token = time.monotonic(), 1

        key = ManagedKey("app", "openrouter", Secret("sk-or-v1-" + "f" * 64), "env:X")
        rot = new_rotation(key, "create", actor="timer", reason="due", at=now)
        usage = PullResult("acct", "openai")
        fired = AlertState("key_health:app", True, True, "critical", now, now, [now], {"title": "t"}, now)
        for acting in (
            lambda: db_a.commit([fired], [("ops", {"title": "app: invalid"})], now),
            lambda: db_a.claim(row, now),
            lambda: RotationStore(sa.engine).save(rot),
            lambda: UsageStore(sa.engine).apply(usage, now),
            lambda: UsageStore(sa.engine).add_marks("b1", now, ["50"], now, Decimal("0.5")),
        ):
            a._confirmed_at, a._token = time.monotonic(), 1
            with pytest.raises(NotLeader):
                acting()
        assert db_b.load_states() == {} and [m.id for m in db_b.messages()] == [row]
        assert RotationStore(sb.engine).get(rot.id) is None
        assert UsageStore(sb.engine).sources() == {}
        assert UsageStore(sb.engine).marks("b1", now) == set()
        # the successor does each of them; a row it delivered is not claimed again by anyone
        db_b.commit([fired], [], now)
        assert db_b.load_states()["key_health:app"].firing is True
        assert db_b.claim(row, now) is True
        RotationStore(sb.engine).save(rot)
        UsageStore(sb.engine).apply(usage, now)
        UsageStore(sb.engine).add_marks("b1", now, ["50"], now, Decimal("0.5"))
        assert RotationStore(sb.engine).get(rot.id) is not None and "acct" in UsageStore(sb.engine).sources()
        db_b.mark_delivered(row, now)
        assert db_b.claim(row, now) is False
        assert claim_of(sb, row) == ("b", 2, "delivered")
    finally:
        a.close()
        b.close()
        sa.dispose()
        sb.dispose()
