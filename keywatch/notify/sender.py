"""One delivery task per sink: a sink that is down delays only its own queue.

Per sink, messages leave in outbox order: the oldest undelivered row is retried (exponential backoff with
jitter, never sooner than the sink's Retry-After) before any later one is tried. A permanent refusal marks
the sink broken: its queue is dropped and counted, and the other sinks hear about it.

A config reload keeps one sender per sink name (so a row is never in two senders' hands): a changed sink is
swapped in between two deliveries, a removed one is drained and stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog

from keywatch.notify.base import Message, Sink, SinkError, alert_from_dict, parse_time
from keywatch.notify.outbox import AlertDB, OutboxItem
from keywatch.notify.pipeline import AlertMetrics, Clock, utcnow
from keywatch.runtime import NotLeader

log = structlog.get_logger("keywatch.alerts")

BrokenCallback = Callable[[Sink, SinkError], Awaitable[None]]


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay before attempt `attempts + 1`: doubling from `base` up to `cap`, with half of it random."""
    d = min(cap, base * (2 ** max(0, attempts - 1)))
    return d / 2 + random.uniform(0, d / 2)


def message_of(item: OutboxItem, dashboard_url: str | None, delivery_id: str | None = None) -> Message:
    alerts = [alert_from_dict(a) for a in item.payload.get("alerts", [])]
    since = {k: parse_time(v) for k, v in (item.payload.get("since") or {}).items()}
    delivery_id = delivery_id or item.payload.get("delivery_id")
    if delivery_id:
        return Message(item.id, alerts, since, dashboard_url, delivery_id=str(delivery_id))
    return Message(item.id, alerts, since, dashboard_url)


class SinkSender:
    def __init__(
        self,
        sink: Sink,
        db: AlertDB,
        metrics: AlertMetrics | None = None,
        *,
        retry_base: float = 5.0,
        retry_max: float = 600.0,
        dashboard_url: str | None = None,
        on_broken: BrokenCallback | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.sink = sink
        self.clock = clock  # the pipeline's: the time its rows are queued at
        self.db = db
        self.metrics = metrics
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.dashboard_url = dashboard_url
        self.on_broken = on_broken
        self.broken = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = False
        self._draining_blocked = False
        self._last_sent = 0.0
        self.sending = False
        if metrics is not None:
            metrics.sink_up.labels(sink.name).set(1)
            metrics.pending.labels(sink.name).set(0)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def drain(self) -> None:
        """Send what is queued while the sink takes it, then end: at the first failure, or when the queue
        is empty. Used for a sink a reload removed; what is left stays pending in the outbox."""
        self._draining = True
        self._wake.set()

    def reconfigure(
        self,
        sink: Sink,
        *,
        retry_base: float,
        retry_max: float,
        dashboard_url: str | None,
        fresh_start: bool = False,
    ) -> None:
        """Take effect from the next delivery; one in flight finishes against the sink it started with.
        `fresh_start`: the destination changed, so an earlier permanent refusal no longer applies."""
        self.sink = sink
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.dashboard_url = dashboard_url
        if fresh_start:
            self.broken = False
            if self.metrics is not None:
                self.metrics.sink_up.labels(sink.name).set(1)
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early for stop() and for new rows."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(0.0, seconds))

    async def run(self) -> None:
        while not self._stopping and not self.broken:
            if self._draining and self._draining_blocked:
                return
            self._wake.clear()  # before reading, so a row enqueued meanwhile still wakes the sleep below
            try:
                item = await asyncio.to_thread(self.db.next_pending, self.sink.name)
                pending = await asyncio.to_thread(self.db.pending_count, self.sink.name)
            except Exception as exc:
                log.warning("alert_outbox_read_failed", sink=self.sink.name, error=type(exc).__name__)
                await self._sleep(self.retry_base)
                continue
            if self.metrics is not None:
                self.metrics.pending.labels(self.sink.name).set(pending)
            if item is None:
                if self._draining:
                    return
                await self._sleep(30.0)
                continue
            now = datetime.now(UTC)
            if item.next_attempt_at is not None and item.next_attempt_at > now:
                if self._draining:
                    return  # it failed before: a sink no longer configured gets no retries
                await self._sleep((item.next_attempt_at - now).total_seconds())
                continue
            gap = self.sink.min_interval - (asyncio.get_running_loop().time() - self._last_sent)
            if gap > 0:
                await self._sleep(gap)
                continue
            await self._deliver(item)

    async def _deliver(self, item: OutboxItem) -> None:
        sink = self.sink
        name = sink.name
        delivery_id = item.payload.get("delivery_id")
        if not delivery_id:  # a row queued before delivery ids existed: give it one that its retries keep
            try:
                delivery_id = await asyncio.to_thread(self.db.delivery_id, item)
            except Exception as exc:
                log.warning("alert_outbox_write_failed", sink=name, error=type(exc).__name__)
                await self._sleep(self.retry_base)
                return
        # Several instances on one database: only the leader sends. Just before each send it claims the row
        # (AlertDB.claim): its fencing token checked, the row still pending, the claim recorded, in one
        # transaction; a deposed leader sends nothing, and a row its successor delivered is not sent again.
        try:
            claimed = await asyncio.to_thread(self.db.claim, item.id, datetime.now(UTC))
        except NotLeader:
            await self._sleep(self.retry_base)
            return
        except Exception as exc:
            log.warning("alert_outbox_write_failed", sink=name, error=type(exc).__name__)
            await self._sleep(self.retry_base)
            return
        if not claimed:
            return  # delivered or dropped by another instance meanwhile: the next pending row is read again
        self.sending = True
        try:
            await sink.send(message_of(item, self.dashboard_url, str(delivery_id)))
        except SinkError as exc:
            self._last_sent = asyncio.get_running_loop().time()
            await self._failed(item, exc, sink)
            return
        except Exception as exc:  # a bug in a sink must not end its sender
            self._last_sent = asyncio.get_running_loop().time()
            log.exception("alert_sink_crashed", sink=name)
            await self._failed(item, SinkError(type(exc).__name__), sink)
            return
        finally:
            self.sending = False
        self._last_sent = asyncio.get_running_loop().time()
        await self._persist(self.db.mark_delivered, item.id, datetime.now(UTC))
        if self.metrics is not None:
            self.metrics.alerts.labels(name, "sent").inc()
            self.metrics.sink_up.labels(name).set(1)
        log.info("alert_delivered", sink=name, message=item.id, delivery=delivery_id, attempts=item.attempts + 1)

    async def _failed(self, item: OutboxItem, exc: SinkError, sink: Sink) -> None:
        name = sink.name
        if self._draining:
            self._draining_blocked = True
        if self.metrics is not None:
            self.metrics.alerts.labels(name, "failed").inc()
            self.metrics.sink_up.labels(name).set(0)
        # A refusal by the destination a reload just replaced says nothing about the new one: retry there.
        if exc.permanent and sink is self.sink and not self._draining:
            self.broken = True
            # What was queued until now: a row queued later (a reload gave the sink a new destination while
            # this is written) is for the new one.
            dropped = await self._persist(self.db.drop_pending, name, f"sink broken: {exc}", self.clock())
            if self.metrics is not None:
                self.metrics.alerts.labels(name, "dropped").inc(dropped or 0)
                self.metrics.pending.labels(name).set(0)
            log.error(
                "alert_sink_broken",
                sink=name,
                target=self.sink.describe(),
                error=str(exc),
                dropped=dropped,
                hint="give the sink a working URL (in the config or the secret it references), "
                "then reload keywatch (systemctl reload keywatch)",
            )
            # Unless a reload gave the sink a new destination while the drop was written: the new one is
            # not broken, and marking it so would drop its next alerts.
            if self.on_broken is not None and sink is self.sink and self.broken:
                try:
                    await self.on_broken(self.sink, exc)
                except Exception:
                    log.exception("alert_sink_broken_callback_failed", sink=name)
            return
        attempts = item.attempts + 1
        delay = max(exc.retry_after or 0.0, backoff(attempts, self.retry_base, self.retry_max))
        next_at = datetime.now(UTC) + timedelta(seconds=delay)
        await self._persist(self.db.mark_failed, item.id, attempts, next_at, str(exc))
        log.warning(
            "alert_delivery_failed",
            sink=name,
            message=item.id,
            attempts=attempts,
            error=str(exc),
            retry_in_s=round(delay, 3),
        )

    async def _persist(self, fn: Callable[..., object], *args: object) -> int | None:
        """Write a delivery result, retrying while the database is away: a forgotten success
        would be sent again."""
        delay = self.retry_base
        while True:
            try:
                result = await asyncio.to_thread(fn, *args)
                return result if isinstance(result, int) else None
            except Exception as exc:
                log.warning("alert_outbox_write_failed", sink=self.sink.name, error=type(exc).__name__)
                if self._stopping:
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
