"""Delivery over real HTTP (an aiohttp receiver on loopback): Retry-After is honoured, a 410 marks the sink
broken and the other sinks hear it, webhook signatures verify, and one long sink outage delays only it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from keywatch.domain import Alert, Severity
from keywatch.notify.config import AlertsConfig
from keywatch.notify.outbox import AlertDB
from keywatch.notify.pipeline import AlertMetrics
from keywatch.notify.registry import SinkClient
from keywatch.notify.service import AlertService
from keywatch.notify.slack import SlackSink
from keywatch.notify.webhook import WebhookSink
from keywatch.store.repo import Store


@dataclass
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


Responder = Callable[[Received], tuple[int, dict[str, str], str]]


@dataclass
class Receiver:
    """A real HTTP server that records every request and answers as `respond` says."""

    respond: Responder = lambda r: (200, {}, "ok")
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        rec = Received(time.monotonic(), request.path, dict(request.headers), await request.read())
        status, headers, text = self.respond(rec)
        rec.status = status
        self.requests.append(rec)
        return web.Response(status=status, headers=headers, text=text)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]


class ThreadedReceiver(Receiver):
    """The same receiver on its own event loop, for tests that drive a daemon process."""

    def __enter__(self) -> ThreadedReceiver:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def alert(i: int, summary: str = "401 invalid_api_key", firing: bool = True) -> Alert:
    return Alert(
        f"key_health:k{i}",
        Severity.CRITICAL,
        firing,
        f"key k{i} (openai) is invalid",
        summary,
        datetime.now(UTC),
        key=f"k{i}",
        provider="openai",
        fields={"masked": "sk-proj-...GDYA", "fingerprint": "sha256:0123456789ab"},
    )


@pytest.fixture
def db(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'alerts.db'}")
    store.upgrade()
    yield AlertDB(store.session)
    store.dispose()


@pytest.fixture
async def http():
    client = SinkClient()
    yield client
    await client.aclose()


def config(*sinks: str, **kw: Any) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "sinks": [{"name": n, "type": "console"} for n in sinks],
            "retry_base": "10ms",
            "retry_max": "50ms",
            "group_wait": "0s",
            **kw,
        }
    )


async def run_service(
    cfg: AlertsConfig, sinks: list[Any], db: AlertDB
) -> tuple[AlertService, CollectorRegistry]:
    registry = CollectorRegistry()
    service = AlertService(cfg, sinks, db, AlertMetrics(registry), tick_interval=0.02)
    await service.start()
    return service, registry


async def test_slack_429_retry_after_is_honoured_and_the_payload_fits_block_kit(db: AlertDB, http) -> None:
    calls = {"n": 0}

    def respond(r: Received) -> tuple[int, dict[str, str], str]:
        calls["n"] += 1
        return (429, {"Retry-After": "1"}, "rate_limited") if calls["n"] == 1 else (200, {}, "ok")

    rx = await Receiver(respond).start()
    sink = SlackSink("slack", rx.url("/services/T0/B0/SECRETPART"), http, min_interval=0)
    service, registry = await run_service(config("slack"), [sink], db)
    try:
        await service.emit(alert(1, summary="E" * 50_000))
        await wait_until(rx.accepted, "the retry to be accepted")
    finally:
        await service.stop()
        await rx.stop()
    first, second = rx.requests
    assert second.at - first.at >= 1.0  # not before Retry-After
    body = second.json()
    assert len(body["blocks"]) <= 50 and len(body["text"]) <= 3000
    assert all(
        len(b["text"]["text"]) <= 3000 for b in body["blocks"] if b["type"] == "section" and "text" in b
    )
    assert registry.get_sample_value("keywatch_alerts_total", {"sink": "slack", "result": "sent"}) == 1
    assert registry.get_sample_value("keywatch_alerts_total", {"sink": "slack", "result": "failed"}) == 1


async def test_slack_gets_at_most_one_message_per_second(db: AlertDB, http) -> None:
    rx = await Receiver().start()
    sink = SlackSink("slack", rx.url("/services/T0/B0/X"), http, min_interval=1.0)
    service, _ = await run_service(config("slack"), [sink], db)
    try:
        for i in range(3):
            await service.emit(alert(i))
        await wait_until(lambda: len(rx.accepted()) == 3, "three messages")
    finally:
        await service.stop()
        await rx.stop()
    times = [r.at for r in rx.requests]
    assert all(b - a >= 0.99 for a, b in itertools.pairwise(times))


async def test_410_marks_slack_broken_and_the_other_sinks_hear_it(db: AlertDB, http) -> None:
    slack_rx = await Receiver(lambda r: (410, {}, "channel_is_archived")).start()
    hook_rx = await Receiver().start()
    slack_url = slack_rx.url("/services/T0/B0/SECRETPART")
    sinks = [SlackSink("slack", slack_url, http, min_interval=0), WebhookSink("hook", hook_rx.url(), http)]
    service, registry = await run_service(config("slack", "hook"), sinks, db)
    try:
        await service.emit(alert(1))
        await wait_until(
            lambda: any(
                a["identity"] == "sink_broken:slack" for r in hook_rx.accepted() for a in r.json()["alerts"]
            ),
            "the broken-sink alert on the webhook",
        )
        await service.emit(alert(2))
        await wait_until(lambda: len(hook_rx.accepted()) == 3, "alert 2 on the webhook")
    finally:
        await service.stop()
        await slack_rx.stop()
        await hook_rx.stop()
    assert len(slack_rx.requests) == 1  # no retries against a permanent refusal
    broken = next(
        a for r in hook_rx.accepted() for a in r.json()["alerts"] if a["identity"] == "sink_broken:slack"
    )
    assert "channel_is_archived" in broken["summary"] and "SECRETPART" not in json.dumps(broken)
    assert registry.get_sample_value("keywatch_sink_up", {"sink": "slack"}) == 0
    assert registry.get_sample_value("keywatch_sink_up", {"sink": "hook"}) == 1
    # Dropped for the broken sink: the queued alert 1, then the broken-sink alert and alert 2 as they came.
    assert registry.get_sample_value("keywatch_alerts_total", {"sink": "slack", "result": "dropped"}) == 3
    assert db.messages("slack", status="pending") == []


async def test_webhook_signature_verifies_with_the_docs_recipe(db: AlertDB, http) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    rx = await Receiver().start()
    service, _ = await run_service(config("hook"), [WebhookSink("hook", rx.url(), http, secret=secret)], db)
    try:
        await service.emit(alert(1))
        await wait_until(rx.accepted, "the webhook")
    finally:
        await service.stop()
        await rx.stop()
    req = rx.requests[0]

    def verify(secret: str, body: bytes, headers: dict, tolerance: int = 300) -> bool:  # the docs recipe
        msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
        if abs(time.time() - int(timestamp)) > tolerance:
            return False
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{msg_id}.{timestamp}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(hmac.compare_digest(expected, s.partition(",")[2]) for s in headers["webhook-signature"].split())

    assert verify(secret, req.body, req.headers)
    assert not verify(secret, req.body.replace(b"k1", b"k2"), req.headers)
    assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), req.body, req.headers)
    assert req.headers["webhook-id"] == req.json()["id"]
    assert req.json()["alerts"][0]["identity"] == "key_health:k1"


async def test_a_sink_down_for_many_retries_gets_everything_once_in_order_without_delaying_others(
    db: AlertDB, http
) -> None:
    down = {"on": True}
    rx_down = await Receiver(lambda r: (503, {}, "unavailable") if down["on"] else (200, {}, "ok")).start()
    rx_up = await Receiver().start()
    sinks = [WebhookSink("flaky", rx_down.url(), http), WebhookSink("steady", rx_up.url(), http)]
    service, registry = await run_service(config("flaky", "steady"), sinks, db)
    try:
        for i in range(10):
            await service.emit(alert(i))
        await wait_until(lambda: len(rx_up.accepted()) == 10, "the steady sink to get all ten")
        assert rx_down.accepted() == []  # meanwhile the flaky sink was still down
        await wait_until(lambda: len(rx_down.requests) >= 30, "many retry intervals")
        assert registry.get_sample_value("keywatch_alerts_pending", {"sink": "flaky"}) == 10
        assert registry.get_sample_value("keywatch_sink_up", {"sink": "flaky"}) == 0
        down["on"] = False
        await wait_until(lambda: len(rx_down.accepted()) == 10, "the flaky sink to catch up")
    finally:
        await service.stop()
        await rx_down.stop()
        await rx_up.stop()
    got = [r.json()["alerts"][0]["identity"] for r in rx_down.accepted()]
    assert got == [f"key_health:k{i}" for i in range(10)]  # each once, in order
    assert [r.json()["alerts"][0]["identity"] for r in rx_up.accepted()] == got
    assert db.messages(status="pending") == []
    assert registry.get_sample_value("keywatch_sink_up", {"sink": "flaky"}) == 1
