"""A reload (what SIGHUP does) that changes `[alerts]` takes effect without a restart, against real HTTP
receivers: a new webhook URL gets the next alert (and un-breaks the sink), a new sink and route are used, an
unresolvable secret keeps the running sinks, a removed sink's queue stays in the outbox, and alerts queued or in
flight for a kept sink arrive exactly once."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from keywatch.daemon import Daemon
from keywatch.metrics import Metrics
from keywatch.notify.outbox import AlertDB
from keywatch.sim import Simulator
from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_notify_delivery import Receiver, alert, wait_until


@dataclass
class GatedReceiver(Receiver):
    """A receiver that can hold requests open (a delivery in flight) until `release()`."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def _handle(self, request: web.Request) -> web.Response:
        self.started += 1
        await self.gate.wait()
        return await super()._handle(request)


@dataclass
class Harness:
    daemon: Daemon
    cfg: Path
    secret_dir: Path
    key_toml: str

    def write(self, sinks_and_routes: str, settings: str = "") -> None:
        self.cfg.write_text(self.key_toml + '\n[alerts]\nretry_base = "50ms"\nretry_max = "100ms"\n'
                            'group_wait = "0s"\n' + settings + sinks_and_routes)

    def secret_file(self, name: str, value: str) -> str:
        path = self.secret_dir / name
        path.write_text(value + "\n")
        return f"file:{path}"

    async def reload(self) -> None:
        """What SIGHUP runs, then one probe cycle (whose hook applies the new `[alerts]` at the latest)."""
        assert await self.daemon.reload()
        await self.daemon.cycle()

    @property
    def db(self) -> AlertDB:
        return self.daemon.capabilities["alerts"].service.db

    def rows(self, status: str | None = None) -> list[Any]:
        return self.db.messages(status=status)


def webhook(name: str, url_ref: str, extra: str = "") -> str:
    return f'[[alerts.sinks]]\nname = "{name}"\ntype = "webhook"\nurl = "{url_ref}"\n{extra}'


@pytest.fixture
async def harness(tmp_path: Path, fresh_sim: Simulator) -> AsyncIterator[Harness]:
    secret = unique_secret()
    fresh_sim.set_key(secret, "openai", "healthy")
    os.environ["KW_RELOAD_TEST_KEY"] = secret
    keys = [{"name": "k1", "provider": "openai", "secret": "env:KW_RELOAD_TEST_KEY",
             "base_url": f"{fresh_sim.url}/openai/v1"}]
    key_toml = toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{free_port()}", interval="1h")
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    h = Harness(Daemon(tmp_path / "keywatch.toml", metrics=Metrics(CollectorRegistry())), tmp_path / "keywatch.toml",
                secret_dir, key_toml)
    yield h
    await h.daemon.shutdown()


async def start(h: Harness, alerts: str) -> None:
    h.write(alerts)
    await h.daemon.start()


def identities(rx: Receiver) -> list[str]:
    return [a["identity"] for r in rx.accepted() for a in r.json()["alerts"]]


async def test_a_new_webhook_url_gets_the_next_alert_and_unbreaks_the_sink(harness: Harness) -> None:
    old = await Receiver(lambda r: (410, {}, "channel_is_archived")).start()
    new = await Receiver().start()
    try:
        await start(harness, webhook("hook", harness.secret_file("hook_url", old.url("/old"))))
        await harness.daemon.emit_alert(alert(1))
        service = harness.daemon.capabilities["alerts"].service
        await wait_until(lambda: service.senders["hook"].broken, "the 410 to break the sink")

        harness.secret_file("hook_url", new.url("/new"))  # same reference, new content: what an operator edits
        await harness.reload()
        await harness.daemon.emit_alert(alert(2))
        await wait_until(lambda: "key_health:k2" in identities(new), "alert 2 at the new URL")
    finally:
        await old.stop()
        await new.stop()
    assert len(old.requests) == 1  # nothing more to the old URL after the reload
    assert all(r.path == "/new" for r in new.requests)
    assert harness.rows("dropped")[0].payload["alerts"][0]["identity"] == "key_health:k1"
    registry = harness.daemon.metrics.registry
    assert registry.get_sample_value("keywatch_sink_up", {"sink": "hook"}) == 1


async def test_a_reload_adding_a_sink_and_a_route_delivers_to_it(harness: Harness) -> None:
    team = await Receiver().start()
    oncall = await Receiver().start()
    try:
        await start(harness, webhook("team", harness.secret_file("team", team.url())))
        await harness.daemon.emit_alert(alert(1))
        await wait_until(lambda: identities(team) == ["key_health:k1"], "alert 1 on the first sink")

        harness.write(
            webhook("team", harness.secret_file("team", team.url()))
            + webhook("oncall", harness.secret_file("oncall", oncall.url()))
            + '[[alerts.routes]]\nmatch = { key = "k3" }\nsinks = ["oncall"]\n'
        )
        await harness.reload()
        await harness.daemon.emit_alert(alert(2))  # no route matches: every sink
        await harness.daemon.emit_alert(alert(3))  # the new route: only the new sink
        await wait_until(lambda: len(oncall.accepted()) == 2, "two alerts on the new sink")
        await wait_until(lambda: len(team.accepted()) == 2, "alert 2 on the first sink")
    finally:
        await team.stop()
        await oncall.stop()
    assert identities(oncall) == ["key_health:k2", "key_health:k3"]
    assert identities(team) == ["key_health:k1", "key_health:k2"]


async def test_an_unresolvable_sink_secret_keeps_the_running_sinks_and_says_which_field(
    harness: Harness, tmp_path: Path
) -> None:
    rx = await Receiver().start()
    other = await Receiver().start()
    try:
        url_ref = harness.secret_file("hook", rx.url())
        await start(harness, webhook("hook", url_ref))
        harness.write(
            webhook("hook", url_ref, 'min_severity = "critical"\n')
            + webhook("other", f"file:{tmp_path / 'missing-url'}")
            + '[[alerts.routes]]\nmatch = {}\nsinks = ["other"]\n'
        )
        with capture_logs() as logs:
            await harness.reload()
        await harness.daemon.emit_alert(alert(1))
        await wait_until(lambda: "key_health:k1" in identities(rx), "alert 1 on the running sink")
    finally:
        await rx.stop()
        await other.stop()
    refused = [e for e in logs if e["event"] == "alerts_reload_refused"]
    assert len(refused) == 1 and refused[0]["problem"].startswith("alerts.sinks[1].url: sink 'other'")
    assert harness.daemon.inventory is not None and harness.daemon.capabilities["alerts"].service.config.routes == []
    assert "alerts_config_refused" in identities(rx)  # people who only read the alerts hear it too
    assert other.requests == []


async def test_alerts_queued_and_in_flight_for_a_kept_sink_arrive_exactly_once(harness: Harness) -> None:
    rx = await GatedReceiver().start()
    added = await Receiver().start()
    try:
        url_ref = harness.secret_file("hook", rx.url())
        await start(harness, webhook("hook", url_ref))
        rx.gate.clear()  # the first delivery hangs in flight across the reload
        for i in range(5):
            await harness.daemon.emit_alert(alert(i))
        await wait_until(lambda: rx.started == 1 and len(harness.rows("pending")) == 5, "one delivery in flight")

        harness.write(
            webhook("hook", url_ref, 'timeout = "20s"\n')  # a changed sink: swapped between deliveries
            + webhook("added", harness.secret_file("added", added.url())),
            settings='repeat_interval = "2h"\n',
        )
        await harness.reload()
        await harness.daemon.emit_alert(alert(5))
        rx.gate.set()
        await wait_until(lambda: not harness.rows("pending"), "the outbox to empty")
    finally:
        rx.gate.set()
        await rx.stop()
        await added.stop()
    assert sorted(identities(rx)) == sorted(f"key_health:k{i}" for i in range(6))  # each exactly once
    assert len({r.headers["webhook-id"] for r in rx.accepted()}) == len(rx.requests) == 6
    assert identities(added) == ["key_health:k5"]  # the new sink gets only what came after the reload
    assert harness.daemon.capabilities["alerts"].service.config.repeat_interval == 7200


async def test_a_removed_sink_keeps_its_unsent_alerts_and_says_how_many(harness: Harness) -> None:
    down = await Receiver(lambda r: (503, {}, "unavailable")).start()
    kept = await Receiver().start()
    try:
        kept_ref = harness.secret_file("kept", kept.url())
        await start(harness, webhook("gone", harness.secret_file("gone", down.url())) + webhook("kept", kept_ref))
        await harness.daemon.emit_alert(alert(1))
        await wait_until(lambda: len(down.requests) >= 2, "failed attempts on the sink to be removed")

        harness.write(webhook("kept", kept_ref))
        with capture_logs() as logs:
            await harness.reload()
            await wait_until(
                lambda: any(e["event"] == "alert_sink_removed_with_pending" for e in logs), "the removal log"
            )
        attempts = len(down.requests)
        await harness.daemon.emit_alert(alert(2))
        await wait_until(lambda: len(kept.accepted()) == 2, "alert 2 on the kept sink")
        # The receiver answers before the sender records the delivery: wait for the kept sink's row to be
        # marked sent before reading what is still pending.
        await wait_until(lambda: "kept" not in [r.sink for r in harness.rows("pending")], "alert 2 recorded sent")
    finally:
        await down.stop()
        await kept.stop()
    removed = next(e for e in logs if e["event"] == "alert_sink_removed_with_pending")
    assert removed["sink"] == "gone" and removed["pending"] == 1
    assert [r.sink for r in harness.rows("pending")] == ["gone"]  # kept, not dropped
    assert len(down.requests) == attempts
    registry = harness.daemon.metrics.registry
    assert registry.get_sample_value("keywatch_sink_up", {"sink": "gone"}) is None


async def test_a_new_url_given_while_the_broken_sink_s_queue_is_being_dropped_still_gets_the_next_alert(
        harness: Harness, monkeypatch) -> None:
    """The reload may come while the broken sink's queue is still being written as dropped (a slow database):
    the new destination is not marked broken by that, and the alert after the reload reaches it."""
    import time

    old = await Receiver(lambda r: (410, {}, "channel_is_archived")).start()
    new = await Receiver().start()
    try:
        await start(harness, webhook("hook", harness.secret_file("hook_url", old.url("/old"))))
        service = harness.daemon.capabilities["alerts"].service
        real = service.db.drop_pending

        def slow_drop(*args, **kwargs):
            time.sleep(1.0)
            return real(*args, **kwargs)

        monkeypatch.setattr(service.db, "drop_pending", slow_drop)
        await harness.daemon.emit_alert(alert(1))
        await wait_until(lambda: service.senders["hook"].broken, "the 410 to break the sink")
        harness.secret_file("hook_url", new.url("/new"))
        await harness.reload()  # while the drop is being written
        await harness.daemon.emit_alert(alert(2))
        await wait_until(lambda: "key_health:k2" in identities(new), "alert 2 at the new URL")
        await wait_until(lambda: harness.rows("dropped"), "alert 1 dropped")
    finally:
        await old.stop()
        await new.stop()
    assert [r.payload["alerts"][0]["identity"] for r in harness.rows("dropped")] == ["key_health:k1"]
