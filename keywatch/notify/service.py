"""Alerting inside the daemon: attaches the durable pipeline to the runtime's alert bus and starts one
sender per sink. Listed in keywatch.extensions.DAEMON_CAPABILITIES.

This capability delivers alerts; it decides none about keys. Key alerts are decided by policies (the
built-in ones included), in the policy engine's cycle plan.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog

from keywatch.domain import Alert, Severity
from keywatch.notify.base import Sink, SinkError, alert_from_dict
from keywatch.notify.config import AlertsConfig
from keywatch.notify.console import ConsoleSink
from keywatch.notify.outbox import AlertDB
from keywatch.notify.pipeline import AlertMetrics, AlertPipeline, Clock, utcnow
from keywatch.notify.registry import SinkClient, SinkConfigError, SinkSpec, resolve_sinks
from keywatch.notify.sender import SinkSender
from keywatch.runtime import CycleReport, Runtime

log = structlog.get_logger("keywatch.alerts")


def alerts_config(config: Any) -> AlertsConfig:
    cfg = getattr(config, "alerts", None)
    return cfg if isinstance(cfg, AlertsConfig) else AlertsConfig()


DRAIN_GRACE = 15.0  # seconds a removed sink may keep sending what was queued for it


class SinkHost:
    """The SinkContext of one sink object's background work; `retire` ends it (a reload removed or
    replaced the sink, or the service stops)."""

    def __init__(self, service: AlertService, sink: Sink) -> None:
        self.service = service
        self.sink = sink
        self.task: asyncio.Task[Any] | None = None
        self._retired = asyncio.Event()

    @property
    def dashboard_url(self) -> str | None:
        return self.service.config.dashboard_url

    @property
    def broken(self) -> bool:
        sender = self.service.senders.get(self.sink.name)
        return sender is None or sender.broken

    async def wait(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retired.wait(), timeout=seconds)
        return not self._retired.is_set()

    async def pending(self) -> int:
        return await asyncio.to_thread(self.service.db.pending_count, self.sink.name)

    def active_alerts(self) -> list[tuple[Alert, datetime | None]]:
        return self.service.pipeline.active_alerts(self.sink.name)

    def retire(self) -> None:
        self._retired.set()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


class AlertService:
    """The pipeline, its senders and the periodic work (groups, held changes, repeats, the sinks'
    background work). `reconfigure` applies a reloaded `[alerts]` without a restart."""

    def __init__(
        self,
        config: AlertsConfig,
        sinks: list[Sink],
        db: AlertDB,
        metrics: AlertMetrics | None = None,
        *,
        clock: Clock = utcnow,
        tick_interval: float | None = None,
        drain_grace: float = DRAIN_GRACE,
    ) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.db = db
        self.metrics = metrics
        self.pipeline = AlertPipeline(config, self.sinks, db, metrics, clock=clock, on_enqueued=self._wake)
        self.senders = {s.name: self._sender(s) for s in sinks}
        self._fixed_tick = tick_interval
        self.tick_interval = tick_interval or self._tick_for(config)
        self.drain_grace = drain_grace
        self.on_tick: Callable[[], Awaitable[None]] | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        self._sender_tasks: dict[str, asyncio.Task[Any]] = {}
        self._hosts: dict[str, SinkHost] = {}  # sink name -> its background work
        self._retiring: dict[str, asyncio.Task[Any]] = {}
        self._started = False
        self._stopping = asyncio.Event()

    def firing(self) -> list[Alert]:
        """The alerts raised and not resolved, from the pipeline's durable state."""
        return [alert_from_dict(st.alert) for st in self.pipeline.states.values() if st.firing]

    @staticmethod
    def _tick_for(config: AlertsConfig) -> float:
        return max(0.05, min(1.0, config.group_wait / 4 or 1.0))

    def _sender(self, sink: Sink) -> SinkSender:
        return SinkSender(
            sink,
            self.db,
            self.metrics,
            retry_base=self.config.retry_base,
            retry_max=self.config.retry_max,
            dashboard_url=self.config.dashboard_url,
            on_broken=self._sink_broken,
            clock=self.pipeline.clock,
        )

    def _task(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        if task in self.tasks:
            self.tasks.remove(task)

    def _run_sender(self, name: str) -> None:
        sender = self.senders[name]
        previous = self._retiring.get(name)

        async def run() -> None:
            if previous is not None:  # the same name, removed by an earlier reload: one sender per queue
                await asyncio.wait({previous})
            await sender.run()

        self._sender_tasks[name] = self._task(run(), f"alerts-sender-{name}")

    def _run_background(self, sink: Sink) -> None:
        """Start the sink's background work unless this very object already runs it; end the work of the
        sink it replaces."""
        host = self._hosts.get(sink.name)
        if host is not None and host.sink is sink and host.running:
            return
        self._retire_background(sink.name)
        host = SinkHost(self, sink)
        work = sink.background(host)
        if work is not None:
            host.task = self._task(work, f"alerts-background-{sink.name}")
            self._hosts[sink.name] = host

    def _retire_background(self, name: str) -> None:
        host = self._hosts.pop(name, None)
        if host is not None:
            host.retire()

    async def start(self) -> list[asyncio.Task[Any]]:
        try:
            await self.pipeline.start()
        except Exception as exc:  # the database may come back; alerts are then decided afresh
            log.error("alert_state_unavailable", error=type(exc).__name__)
        for name in self.senders:
            self._run_sender(name)
        self._task(self._ticker(), "alerts-ticker")
        for s in self.sinks:
            self._run_background(s)
        started = list(self.tasks)
        self._started = True
        return started

    async def emit(self, alert: Alert) -> None:
        await self.pipeline.emit(alert)

    def _wake(self, sinks: set[str]) -> None:
        for name in sinks:
            sender = self.senders.get(name)
            if sender is not None:
                sender.wake()

    async def _ticker(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.pipeline.tick()
            except Exception:
                log.exception("alert_tick_failed")
            if self.on_tick is not None:
                try:
                    await self.on_tick()
                except Exception:
                    log.exception("alert_reload_check_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.tick_interval)

    async def _sink_broken(self, sink: Sink, exc: SinkError) -> None:
        self.pipeline.mark_broken(sink.name)
        await self.pipeline.emit(
            Alert(
                f"sink_broken:{sink.name}",
                Severity.CRITICAL,
                True,
                f"alert sink {sink.name} is broken",
                f"{sink.type} sink {sink.name} ({sink.describe()}) refused a message for good: {exc}. "
                "Its queued messages were dropped; give it a working URL and reload keywatch "
                "(systemctl reload keywatch).",
                datetime.now(UTC),
                labels={"sink": sink.name},
                fields={"action": "stopped sending to this sink"},
            )
        )

    # -- reload ---------------------------------------------------------------------------------
    async def reconfigure(self, config: AlertsConfig, sinks: list[Sink], fresh: set[str]) -> None:
        """Apply a reloaded `[alerts]`. A sink passed as the very object already running is untouched;
        another object under a running name replaces it between two deliveries (same sender, so each
        queued row is still sent once); `fresh` names sinks whose destination changed, which clears a
        broken mark. Removed sinks drain in the background; their unsent rows stay in the outbox."""
        old = {s.name: s for s in self.sinks}
        new = {s.name: s for s in sinks}
        was_broken = {n for n, sender in self.senders.items() if sender.broken} | self.pipeline.broken
        removed = old.keys() - new.keys()
        # Under the decision lock: from here on no row is written for a removed sink.
        await self.pipeline.reconfigure(config, sinks, fresh)
        self.config = config
        self.sinks = list(sinks)
        self.tick_interval = self._fixed_tick or self._tick_for(config)
        for name, sink in new.items():
            sender = self.senders.get(name)
            if sender is None:
                sender = self.senders[name] = self._sender(sink)
                if self._started:
                    self._run_sender(name)
                log.info("alert_sink_added", sink=name, target=f"{sink.type}: {sink.describe()}")
            else:
                sender.reconfigure(
                    sink,
                    retry_base=config.retry_base,
                    retry_max=config.retry_max,
                    dashboard_url=config.dashboard_url,
                    fresh_start=name in fresh,
                )
                task = self._sender_tasks.get(name)
                if self._started and (task is None or task.done()):
                    self._run_sender(name)  # a broken sender had ended
                if sink is not old[name]:
                    log.info("alert_sink_changed", sink=name, target=f"{sink.type}: {sink.describe()}")
                    self._close_later(old[name])
            if self._started:
                self._run_background(sink)
        for name in removed:
            self._retire_background(name)
            sender = self.senders.pop(name)
            sender.drain()
            self._retiring[name] = self._task(
                self._retire(name, sender, self._sender_tasks.pop(name, None), old[name]),
                f"alerts-retire-{name}",
            )
        for name in was_broken & (removed | fresh):
            await self._resolve_broken(name, "reconfigured" if name in new else "removed")

    async def _resolve_broken(self, name: str, how: str) -> None:
        await self.pipeline.emit(
            Alert(
                f"sink_broken:{name}",
                Severity.CRITICAL,
                False,
                f"alert sink {name} was {how}",
                f"a config reload {how} sink {name}; it is no longer marked broken",
                datetime.now(UTC),
                labels={"sink": name},
                fields={"action": "nothing"},
            )
        )

    def _close_later(self, sink: Sink) -> None:
        """A replaced sink may still be finishing its last delivery: close it once that is over."""

        async def close() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=_timeout(sink) + 1.0)
            with contextlib.suppress(Exception):
                await sink.aclose()

        self._task(close(), f"alerts-close-{sink.name}")

    async def _retire(
        self, name: str, sender: SinkSender, task: asyncio.Task[Any] | None, sink: Sink
    ) -> None:
        """Drain a removed sink, then say how much it leaves behind."""
        try:
            if task is not None:
                stopping = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({task, stopping}, timeout=self.drain_grace, return_when="FIRST_COMPLETED")
                stopping.cancel()
                if not task.done():
                    sender.stop()
                    _, pending = await asyncio.wait({task}, timeout=_timeout(sink) + 1.0)
                    for t in pending:
                        t.cancel()
            try:
                left: int | None = await asyncio.to_thread(self.db.pending_count, name)
            except Exception:
                left = None
            if left:
                log.warning(
                    "alert_sink_removed_with_pending",
                    sink=name,
                    pending=left,
                    hint="the messages stay in the outbox and are sent if a sink of this name is configured "
                    "again",
                )
            else:
                log.info("alert_sink_removed", sink=name, pending=left)
            if self.metrics is not None and name not in self.senders:
                for gauge in (self.metrics.sink_up, self.metrics.pending):
                    with contextlib.suppress(KeyError):
                        gauge.remove(name)
            with contextlib.suppress(Exception):
                await sink.aclose()
        finally:
            if self._retiring.get(name) is asyncio.current_task():
                del self._retiring[name]

    async def stop(self, grace: float = 15.0) -> None:
        """Send waiting groups, let in-flight deliveries finish, then stop; undelivered rows wait
        in the outbox for the next start."""
        try:
            await self.pipeline.flush()
        except Exception:
            log.exception("alert_flush_failed")
        self._stopping.set()
        for name in list(self._hosts):
            self._retire_background(name)
        for sender in self.senders.values():
            sender.stop()
        if self.tasks:
            _, still = await asyncio.wait(list(self.tasks), timeout=grace)
            for t in still:
                t.cancel()
        for s in self.sinks:
            await s.aclose()


def _timeout(sink: Sink) -> float:
    return float(getattr(sink, "timeout", 10.0))


# -- daemon extension ------------------------------------------------------------------------------
class AlertsReloader:
    """Notices a daemon reload (a new inventory object) and applies its `[alerts]` to the running service.

    Secrets are resolved again on every reload, so a webhook URL changed inside its file or environment
    counts as a change too. A reference that does not resolve refuses the whole `[alerts]` part (its routes
    may name the sink it defines): the running sinks, routes and settings stay, the outbox is untouched.
    """

    def __init__(
        self,
        service: AlertService,
        http: Any,
        inventory: Any,
        specs: list[SinkSpec],
        secrets: list[str],
    ) -> None:
        self.service = service
        self.http = http
        self.inventory = inventory
        self.specs = {s.name: s for s in specs}
        self.secrets = set(secrets)
        self.refused = False
        self._lock = asyncio.Lock()

    async def check(self, inventory: Any) -> bool:
        """True when `inventory` (the daemon's current one) brought a new config that was applied. Safe to
        call often and from several places."""
        from keywatch.redact import REGISTRY

        async with self._lock:
            if inventory is None or inventory is self.inventory:
                return False
            self.inventory = inventory
            REGISTRY.add(self.secrets)  # the reload replaced the redactor's list with the keys' secrets only
            return await self._apply(alerts_config(inventory.config), inventory.config.daemon)

    async def _apply(self, config: AlertsConfig, daemon_config: Any) -> bool:
        from keywatch.redact import REGISTRY

        try:
            resolved = await asyncio.to_thread(
                resolve_sinks, config, allow_literal=daemon_config.allow_literal_secrets
            )
        except SinkConfigError as exc:
            for problem in exc.problems:
                log.error(
                    "alerts_reload_refused",
                    problem=problem,
                    kept="the running sinks, routes and alert settings; queued alerts are still sent",
                    hint="fix the reference, then reload again",
                )
            await self._refused(exc.problems)
            return False
        except Exception as exc:
            log.error("alerts_reload_refused", problem=f"{type(exc).__name__}", kept="the running alerts config")
            return False
        specs = {s.name: s for s in resolved}
        new_secrets = {v for s in resolved for v in s.secrets()}
        REGISTRY.add(new_secrets)
        self.secrets |= new_secrets  # a replaced URL stays masked too: it still grants posting
        if specs == self.specs and config == self.service.config:
            await self._accepted()
            return False
        running = {s.name: s for s in self.service.sinks}
        sinks: list[Sink] = []
        fresh: set[str] = set()
        for name, spec in specs.items():
            if self.specs.get(name) == spec and name in running:
                sinks.append(running[name])
                continue
            sinks.append(spec.build(self.http))
            old = self.specs.get(name)
            if old is None or old.destination != spec.destination:
                fresh.add(name)
        if not sinks:
            sinks = [running["log"] if "log" in running and "log" not in self.specs else ConsoleSink("log")]
        before = set(running)
        changed = sorted(n for n in specs if n in before and self.specs.get(n) != specs[n])
        await self.service.reconfigure(config, sinks, fresh)
        self.specs = specs
        log.info(
            "alerts_reloaded",
            added=sorted({s.name for s in sinks} - before),
            removed=sorted(before - {s.name for s in sinks}),
            changed=changed,
            sinks=[f"{s.name} ({s.type}: {s.describe()})" for s in sinks],
            routes=len(config.routes),
        )
        await self._accepted()
        return True

    async def _refused(self, problems: list[str]) -> None:
        self.refused = True
        await self.service.emit(
            Alert(
                "alerts_config_refused",
                Severity.WARNING,
                True,
                "reloaded [alerts] config refused",
                "The running alert sinks and routes are kept. " + "; ".join(problems),
                datetime.now(UTC),
                fields={"action": "kept the running alerts config; fix it and reload keywatch"},
            )
        )

    async def _accepted(self) -> None:
        if not self.refused:
            return
        self.refused = False
        await self.service.emit(
            Alert(
                "alerts_config_refused",
                Severity.WARNING,
                False,
                "reloaded [alerts] config accepted",
                "the [alerts] config that was refused is now applied",
                datetime.now(UTC),
                fields={"action": "nothing"},
            )
        )


class AlertsCapability:
    """The running alert service and what it owns (the HTTP client, the reloader)."""

    def __init__(self, service: AlertService, http: Any, reloader: AlertsReloader) -> None:
        self.service = service
        self.http = http
        self.reloader = reloader

    async def aclose(self) -> None:
        await self.service.stop()
        await self.http.aclose()


async def setup(rt: Runtime) -> AlertsCapability:
    from keywatch.redact import REGISTRY
    from keywatch.settings.loader import ConfigError

    inventory = rt.inventory
    config = alerts_config(inventory.config)
    http = SinkClient()
    try:
        specs = resolve_sinks(config, allow_literal=inventory.config.daemon.allow_literal_secrets)
    except SinkConfigError as exc:
        await http.aclose()
        raise ConfigError(inventory.source, exc.problems) from None
    secrets = [v for s in specs for v in s.secrets()]
    REGISTRY.add(secrets)
    sinks = [s.build(http) for s in specs] or [ConsoleSink("log")]
    metrics = AlertMetrics(rt.registry)
    service = AlertService(config, sinks, AlertDB(rt.store.session), metrics)
    reloader = AlertsReloader(service, http, inventory, specs, secrets)
    rt.alerts.attach(service.emit, firing=service.firing)

    async def notice_reload() -> None:
        await reloader.check(rt.inventory)

    # The ticker notices a reload within a second, whatever the probe interval; the cycle hook makes sure
    # a cycle's alerts are routed under the config it probed with.
    service.on_tick = notice_reload
    rt.spawn(await service.start())

    async def follow_reload(report: CycleReport) -> None:
        await reloader.check(report.inventory)

    rt.on_cycle("alerts", follow_reload)
    log.info("alerts_ready", sinks=[f"{s.name} ({s.type}: {s.describe()})" for s in sinks])
    return AlertsCapability(service, http, reloader)
