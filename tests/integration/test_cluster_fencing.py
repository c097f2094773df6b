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
