"""A sink's background work (Sink.background): the service runs it while that very sink object is the running
one of its name, ends it when a reload replaces or removes the sink or the service stops, and lends it the
sink's queue, its broken mark and its active alerts, whatever the sink's type."""

from __future__ import annotations

import asyncio
from typing import Any

from keywatch.domain import Severity
from keywatch.notify.base import Delivery, Message, SinkBase, SinkContext
from keywatch.notify.config import AlertsConfig
from keywatch.notify.console import ConsoleSink, ConsoleSinkConfig
from keywatch.notify.outbox import AlertDB
from keywatch.notify.service import AlertService
from tests.unit import test_notify_pipeline

db = test_notify_pipeline.db  # the fixture: an alert database on a fresh SQLite file


class Worker(SinkBase):
    """A sink with background work that records what its context tells it."""

    type = "console"
    config = ConsoleSinkConfig

    def __init__(self, name: str) -> None:
        self.name = name
        self.min_interval = 0.0
        self.min_severity = Severity.INFO
        self.running = False
        self.ended = False
        self.seen: list[tuple[Any, ...]] = []

    def describe(self) -> str:
        return "a test sink"

    async def send(self, message: Message) -> Delivery:
        return Delivery(None)

    def background(self, context: SinkContext) -> Any:
        return self._work(context)

    async def _work(self, context: SinkContext) -> None:
        self.running = True
        try:
            while await context.wait(0.01):
                self.seen.append(
                    (context.dashboard_url, context.broken, await context.pending(), context.active_alerts())
                )
        finally:
            self.running, self.ended = False, True


def config(*names: str, **kw: Any) -> AlertsConfig:
    return AlertsConfig.model_validate({"sinks": [{"name": n, "type": "console"} for n in names], **kw})


async def until(cond: Any, what: str) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def background_tasks(service: AlertService) -> list[str]:
    return sorted(t.get_name() for t in service.tasks if t.get_name().startswith("alerts-background-"))


async def test_background_work_follows_the_sink_object_through_reloads(db: AlertDB) -> None:
    first, log = Worker("w"), ConsoleSink("log")
    service = AlertService(config("w", "log"), [first, log], db, tick_interval=0.02)
    await service.start()
    try:
        await until(lambda: len(first.seen) >= 2, "the work to run")
        assert first.seen[-1] == (None, False, 0, [])
        assert background_tasks(service) == ["alerts-background-w"]  # the console sink has none

        cfg = config("w", "log", dashboard_url="https://grafana.example/d/kw")
        await service.reconfigure(cfg, [first, log], set())  # the same object: its work goes on
        await until(lambda: first.seen[-1][0] == "https://grafana.example/d/kw", "the new dashboard URL")
        assert first.running and background_tasks(service) == ["alerts-background-w"]

        second = Worker("w")
        await service.reconfigure(cfg, [second, log], {"w"})  # replaced: the old work ends, the new starts
        await until(lambda: first.ended and second.running, "the replacement's work")
        assert background_tasks(service) == ["alerts-background-w"]

        await service.reconfigure(config("log"), [log], set())  # removed: its work ends
        await until(lambda: second.ended, "the removed sink's work to end")
        await until(lambda: background_tasks(service) == [], "no background task left")

        third = Worker("w")
        await service.reconfigure(config("w", "log"), [third, log], {"w"})
        await until(lambda: third.running, "the re-added sink's work")
    finally:
        await service.stop(grace=2.0)
    assert third.ended and not third.running


async def test_background_work_sees_its_sink_broken(db: AlertDB) -> None:
    worker = Worker("w")
    service = AlertService(config("w"), [worker], db, tick_interval=0.02)
    await service.start()
    try:
        service.senders["w"].broken = True
        await until(lambda: worker.seen and worker.seen[-1][1] is True, "the broken mark")
    finally:
        await service.stop(grace=2.0)
