"""What people get told: once per change, repeats only when due, one resolve, no storm from a flapping key,
nothing while silenced, one message per provider outage, and each alert to the sinks its route names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keywatch.domain import Alert, Severity
from keywatch.notify.config import AlertsConfig
from keywatch.notify.console import ConsoleSink
from keywatch.notify.outbox import AlertDB
from keywatch.notify.pipeline import AlertPipeline
from keywatch.store.repo import Store

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.upgrade()
    yield AlertDB(store.session)
    store.dispose()


def make(db: AlertDB, clock: Clock, sinks=("ops",), **cfg) -> AlertPipeline:
    config = AlertsConfig.model_validate({"sinks": [{"name": n, "type": "console"} for n in sinks], **cfg})
    return AlertPipeline(config, [ConsoleSink(n) for n in sinks], db, clock=clock)


def key_alert(
    clock: Clock, firing: bool = True, key: str = "openai-prod", severity=Severity.CRITICAL, **kw
) -> Alert:
    return Alert(
        f"key_health:{key}",
        severity,
        firing,
        f"key {key} is invalid",
        "401 invalid_api_key",
        clock.now,
        key=key,
        provider="openai",
        **kw,
    )


def sent(db: AlertDB, sink: str = "ops") -> list[list[tuple[str, bool]]]:
    return [[(a["identity"], a["firing"]) for a in m.payload["alerts"]] for m in db.messages(sink)]


async def test_same_alert_twice_is_one_message_and_repeats_after_the_interval(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock, repeat_interval="4h")
    await p.start()
    await p.emit(key_alert(clock))
    clock.advance(300)
    await p.emit(key_alert(clock))
    await p.tick()
    assert len(sent(db)) == 1
    clock.advance(4 * 3600)
    await p.tick()
    assert sent(db) == [[("key_health:openai-prod", True)]] * 2


async def test_resolve_is_sent_once_and_only_after_a_firing(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock)
    await p.start()
    await p.emit(key_alert(clock, firing=False))  # never fired: nothing to resolve
    assert sent(db) == []
    await p.emit(key_alert(clock))
    clock.advance(60)
    await p.emit(key_alert(clock, firing=False))
    await p.emit(key_alert(clock, firing=False))
    assert sent(db) == [[("key_health:openai-prod", True)], [("key_health:openai-prod", False)]]
    resolved = db.messages("ops")[1].payload["alerts"][0]
    assert resolved["severity"] == "critical"  # a resolve reaches the sinks the firing reached


async def test_state_survives_a_restart(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock)
    await p.start()
    await p.emit(key_alert(clock))
    p2 = make(db, clock)
    await p2.start()
    await p2.emit(key_alert(clock))  # a duplicate for the new process too
    await p2.emit(key_alert(clock, firing=False))
    assert sent(db) == [[("key_health:openai-prod", True)], [("key_health:openai-prod", False)]]


async def test_key_flapping_20_times_in_an_hour_gives_at_most_flap_limit_messages(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock, flap_limit=5, flap_window="1h")
    await p.start()
    for _ in range(20):  # a key alert raised and resolved 20 times
        for firing in (True, False):
            alert = Alert("key_health:openai-prod", Severity.CRITICAL, firing, "openai-prod invalid", "401",
                          clock.now, key="openai-prod", provider="openai")
            await p.emit(alert)
            await p.tick()
            clock.advance(90)
    assert clock.now - T0 == timedelta(hours=1)
    messages = sent(db)
    assert len(messages) == 5
    assert "flapping" in db.messages("ops")[-1].payload["alerts"][0]["fields"]["note"]
    # The key is healthy at the end: once the window allows, people hear the latest state, once.
    last_told = messages[-1][0][1]
    clock.advance(3600)
    await p.tick()
    await p.tick()
    after = sent(db)
    if last_told:
        assert after[-1] == [("key_health:openai-prod", False)] and len(after) == 6
    else:
        assert len(after) == 5


async def test_rising_severity_is_sent_at_once(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock)
    await p.start()
    await p.emit(key_alert(clock, severity=Severity.WARNING))
    await p.emit(key_alert(clock, severity=Severity.WARNING))
    await p.emit(key_alert(clock, severity=Severity.CRITICAL))
    assert len(sent(db)) == 2


async def test_silence_holds_alerts_until_it_expires(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock)
    await p.start()
    db.add_silence({"key": "openai-prod"}, T0, T0 + timedelta(hours=2), "ops", "rotating it")
    await p.emit(key_alert(clock))
    await p.emit(key_alert(clock, key="other"))
    await p.tick()
    assert sent(db) == [[("key_health:other", True)]]
    clock.advance(2 * 3600 + 1)
    await p.tick()
    assert sent(db)[-1] == [("key_health:openai-prod", True)]


async def test_silenced_alert_that_resolves_meanwhile_is_never_sent(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock)
    await p.start()
    db.add_silence({"provider": "openai"}, T0, T0 + timedelta(hours=1), "ops", "maintenance")
    await p.emit(key_alert(clock))
    clock.advance(600)
    await p.emit(key_alert(clock, firing=False))
    clock.advance(3600)
    await p.tick()
    assert sent(db) == []


async def test_provider_outage_is_one_message_not_one_per_key(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock, group_wait="30s")
    await p.start()
    for i in range(12):
        await p.emit(key_alert(clock, key=f"k{i}", labels={"group": "outage"}))
        clock.advance(1)
    await p.tick()
    assert sent(db) == []  # still waiting for the rest of the group
    clock.advance(30)
    await p.tick()
    messages = sent(db)
    assert len(messages) == 1 and len(messages[0]) == 12


async def test_routes_send_by_severity_and_labels(db: AlertDB) -> None:
    clock = Clock()
    p = make(
        db,
        clock,
        sinks=("pager", "team-a", "all"),
        routes=[
            {"match": {"team": "a"}, "sinks": ["team-a"], "continue": True},
            {"match": {}, "min_severity": "critical", "sinks": ["pager"]},
            {"match": {}, "sinks": ["all"]},
        ],
    )
    await p.start()
    await p.emit(key_alert(clock, key="a1", severity=Severity.CRITICAL, labels={"team": "a"}))
    await p.emit(key_alert(clock, key="b1", severity=Severity.WARNING, labels={"team": "b"}))
    assert sent(db, "team-a") == [[("key_health:a1", True)]]
    assert sent(db, "pager") == [[("key_health:a1", True)]]
    assert sent(db, "all") == [[("key_health:b1", True)]]


async def test_sink_min_severity_and_broken_sinks_are_skipped(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock, sinks=("a", "b"))
    p.sinks[0].min_severity = Severity.CRITICAL
    await p.start()
    await p.emit(key_alert(clock, key="w", severity=Severity.WARNING))
    p.mark_broken("b")
    await p.emit(key_alert(clock, key="c", severity=Severity.CRITICAL))
    assert sent(db, "a") == [[("key_health:c", True)]]
    assert sent(db, "b") == [[("key_health:w", True)]]


async def test_old_delivered_messages_are_purged(db: AlertDB) -> None:
    clock = Clock()
    p = make(db, clock, retention="7d")
    await p.start()
    await p.emit(key_alert(clock))
    db.mark_delivered(db.messages("ops")[0].id, clock.now)
    await p.tick()
    assert len(db.messages("ops")) == 1
    clock.advance(8 * 86400)
    await p.tick()
    assert db.messages("ops", status="delivered") == []
    assert len(db.messages("ops", status="pending")) == 1  # the repeat of the still-firing alert stays


class _Term:
    """A leadership gate the test turns: fence() refuses once `leading` is False, as a superseded term
    (`unconfirmed` False) or as one no heartbeat confirmed lately (the database away)."""

    instance = "a"
    token = 1

    def __init__(self) -> None:
        self.leading = True
        self.unconfirmed = False

    def fence(self, session) -> None:
        from keywatch.runtime import NotLeader

        if not self.leading:
            raise NotLeader("a: refused", unconfirmed=self.unconfirmed)

    def details(self) -> dict:
        return {}


@pytest.fixture
def gated(tmp_path: Path):
    """An alert database behind a leadership gate the test turns."""
    from keywatch.runtime import attach_leadership

    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.upgrade()
    term = _Term()
    attach_leadership(store.engine, term)
    yield AlertDB(store.session), term
    store.dispose()


async def test_a_deposed_leader_decides_nothing_and_its_successor_alerts_once(gated) -> None:
    """Two instances each believing they lead for a moment (a takeover the old leader has not noticed yet):
    the old one's decision is refused by the fencing check, not kept for a retry, and the successor, which
    loads the states when it takes the lead, sends the alert once."""
    db, term = gated
    clock = Clock()
    old = make(db, clock)
    await old.start()
    term.leading = False  # the successor took over; the old leader has not noticed yet
    await old.emit(key_alert(clock))
    await old.tick()
    await old.flush()
    assert sent(db) == [] and db.load_states() == {}
    term.leading = True  # the successor's term (this test's gate stands for it)
    new = make(db, clock)
    await new.start()
    await new.emit(key_alert(clock))
    await old.flush()  # had the old one kept its refused decision for a retry, this would send it again
    assert sent(db) == [[("key_health:openai-prod", True)]]


async def test_a_leader_whose_term_is_unconfirmed_for_a_while_sends_its_alert_once_confirmed(gated) -> None:
    """The term not confirmed for a moment (no heartbeat got through): the decision is kept and made once a
    heartbeat confirms the term again, so a one-off alert (an action's result) is not lost."""
    db, term = gated
    clock = Clock()
    p = make(db, clock)
    await p.start()
    term.leading, term.unconfirmed = False, True
    await p.emit(key_alert(clock))
    await p.tick()
    assert sent(db) == []
    term.leading = True
    await p.tick()
    assert sent(db) == [[("key_health:openai-prod", True)]]
