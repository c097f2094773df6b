"""The leak receivers on every instance of a cluster: a report delivered to a follower (behind a load
balancer) is verified and recorded durably by it, answered as the leader would, and contained by the leader
only, exactly once, also when the leader was dead at the time (the next one takes it up); a GitHub
delivery id is refused as a replay by every instance. Two daemons as processes
on the PostgreSQL of this machine (a fresh database; skipped, with the reason, without one)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from keywatch.leaks.store import LeakStore
from tests.integration.conftest import fresh_database
from tests.integration.daemon_process import wait_until
from tests.integration.leaks_fleet import LeakFleet, compromised_alerts, post
from tests.integration.test_notify_delivery import ThreadedReceiver

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
HOOK = "/hooks/github/secret-scanning"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("kw_leak") as url:
        yield url


def test_a_report_to_the_follower_is_contained_by_the_leader_exactly_once(sim, pg_url: str, tmp_path: Path) -> None:
    with ThreadedReceiver() as rx:
        fleet = LeakFleet(sim, tmp_path, pg_url, "CLU")
        a, b = fleet.add("a", rx.url("/hook")), fleet.add("b", rx.url("/hook"))
        try:
            a.start(fleet.env)
            wait_until(a.leading, "a leads")
            b.start(fleet.env)
            wait_until(b.ready, "b ready")
            assert a.leading() and not b.leading()
            # A GitHub webhook and a generic report, both to the follower.
            body, headers = fleet.github_webhook("k1", 41)
            status, answer = post(b.port, HOOK, body, headers)
            assert status == 202 and "recorded" in answer["message"], answer
            status, answer = post(b.port, "/api/v1/leaks", *fleet.generic("k2", "ci: job 7, line 3"))
            assert (status, answer["matched"]) == (202, 1), answer
            took = wait_until(lambda: fleet.disable_calls("k1") and fleet.disable_calls("k2"), "k1, k2 deactivated")
            assert took < 10  # the leader's queue poll, not the next probe cycle (an hour away)
            # The delivery again, to either instance: a replay.
            assert post(a.port, HOOK, body, headers)[0] == 409
            assert post(b.port, HOOK, body, headers)[0] == 409
            wait_until(lambda: compromised_alerts(rx, "k1") and compromised_alerts(rx, "k2"), "the alerts")
            time.sleep(3)  # more polls and heartbeats: nothing is done twice
            assert (fleet.disable_calls("k1"), fleet.disable_calls("k2")) == (1, 1)
            assert not fleet.disable_calls("k0") and not fleet.disable_calls("k3")
            assert (compromised_alerts(rx, "k1"), compromised_alerts(rx, "k2")) == (1, 1)
            store = LeakStore(create_engine(pg_url))
            reports = {r.key: r for r in store.reports()}
            assert set(reports) == {"k1", "k2"} and {r.state for r in reports.values()} == {"matched"}
            assert "acme/fleet" in reports["k1"].location
            assert set(store.compromised()) == {"k1", "k2"}
            assert all(c.contained_at is not None for c in store.compromised().values())
            # Only the leader acted.
            assert "key_contained" not in b.log.read_text()
            assert a.log.read_text().count("key_contained") == 2
        finally:
            fleet.stop()


def test_a_report_recorded_while_the_leader_is_dead_is_contained_by_the_next_one(
    sim, pg_url: str, tmp_path: Path
) -> None:
    with ThreadedReceiver() as rx:
        fleet = LeakFleet(sim, tmp_path, pg_url, "CLK")
        a, b = fleet.add("a", rx.url("/hook")), fleet.add("b", rx.url("/hook"))
        try:
            a.start(fleet.env)
            wait_until(a.leading, "a leads")
            b.start(fleet.env)
            wait_until(b.ready, "b ready")
            assert a.proc is not None
            a.proc.kill()
            a.proc.wait(10)
            status, answer = post(b.port, "/api/v1/leaks", *fleet.generic("k3", "siem: proxy log"))
            assert (status, answer["matched"]) == (202, 1), answer  # recorded by the follower, nobody leads
            wait_until(b.leading, "b takes the lead")
            wait_until(lambda: fleet.disable_calls("k3"), "k3 deactivated by the new leader")
            wait_until(lambda: compromised_alerts(rx, "k3"), "the alert")
            time.sleep(2)
            assert fleet.disable_calls("k3") == 1 and compromised_alerts(rx, "k3") == 1
        finally:
            fleet.stop()
