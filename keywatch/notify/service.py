"""Alerting inside the daemon: replaces the log-only emitter with the durable pipeline and starts one
sender per sink. Listed in keywatch.extensions.DAEMON_EXTENSIONS.

Until a policy engine emits key alerts itself, `alerts.default_key_alerts` turns key health changes into
`key_health:<key>` alerts: entering invalid (critical), quota_exhausted or forbidden (warning) fires it;
working again (healthy or rate_limited) resolves it. Provider or network trouble neither fires nor resolves.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import structlog

from keywatch.domain import Alert, Health, Severity, Transition
from keywatch.notify.alertmanager import AlertmanagerSink, to_alertmanager
from keywatch.notify.base import Sink, SinkError
from keywatch.notify.config import AlertsConfig
from keywatch.notify.console import ConsoleSink
from keywatch.notify.outbox import AlertDB
from keywatch.notify.pipeline import AlertMetrics, AlertPipeline, Clock, utcnow
from keywatch.notify.registry import SinkConfigError, build_sinks, make_http_client
from keywatch.notify.sender import SinkSender

log = structlog.get_logger("keywatch.alerts")

KEY_SEVERITY = {
    Health.INVALID: Severity.CRITICAL,
    Health.QUOTA_EXHAUSTED: Severity.WARNING,
    Health.FORBIDDEN: Severity.WARNING,
}


def alerts_config(config: Any) -> AlertsConfig:
    cfg = getattr(config, "alerts", None)
    return cfg if isinstance(cfg, AlertsConfig) else AlertsConfig()


def key_alert(t: Transition, state: Any = None, labels: dict[str, str] | None = None) -> Alert | None:
    """The default alert for one key health change, or None when the change says nothing about the key."""
    identity = f"key_health:{t.key}"
    fields = {
        "health": str(t.new),
        "transition": f"{t.old} → {t.new}",
        "action": "nothing: alert only (no policy acts on this key)",
    }
    if state is not None:
        fields["masked"] = state.masked
        fields["fingerprint"] = state.fingerprint
    if t.new in KEY_SEVERITY:
        reason = t.error_message or t.error_code or (f"HTTP {t.http_status}" if t.http_status else str(t.new))
        return Alert(
            identity,
            KEY_SEVERITY[t.new],
            True,
            f"key {t.key} ({t.provider}) is {t.new}",
            reason,
            t.at,
            key=t.key,
            provider=t.provider,
            labels=dict(labels or {}),
            fields=fields,
        )
    if t.new.is_up and t.old.blames_key:
        return Alert(
            identity,
            Severity.INFO,
            False,
            f"key {t.key} ({t.provider}) works again",
            f"the key is {t.new} again after being {t.old}",
            t.at,
            key=t.key,
            provider=t.provider,
            labels=dict(labels or {}),
            fields={**fields, "action": "nothing"},
        )
    return None


class AlertService:
    """The pipeline, its senders and the periodic work (groups, held changes, repeats,
    Alertmanager re-sends)."""

    def __init__(
        self,
        config: AlertsConfig,
        sinks: list[Sink],
        db: AlertDB,
        metrics: AlertMetrics | None = None,
        *,
        clock: Clock = utcnow,
        tick_interval: float | None = None,
    ) -> None:
        self.config = config
        self.sinks = sinks
        self.db = db
        self.metrics = metrics
        self.pipeline = AlertPipeline(config, sinks, db, metrics, clock=clock, on_enqueued=self._wake)
        self.senders = {
            s.name: SinkSender(
                s,
                db,
                metrics,
                retry_base=config.retry_base,
                retry_max=config.retry_max,
                dashboard_url=config.dashboard_url,
                on_broken=self._sink_broken,
            )
            for s in sinks
        }
        self.tick_interval = tick_interval or max(0.05, min(1.0, config.group_wait / 4 or 1.0))
        self.tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()

    async def start(self) -> list[asyncio.Task[Any]]:
        try:
            await self.pipeline.start()
        except Exception as exc:  # the database may come back; alerts are then decided afresh
            log.error("alert_state_unavailable", error=type(exc).__name__)
        for name, sender in self.senders.items():
            self.tasks.append(asyncio.create_task(sender.run(), name=f"alerts-sender-{name}"))
        self.tasks.append(asyncio.create_task(self._ticker(), name="alerts-ticker"))
        for s in self.sinks:
            if isinstance(s, AlertmanagerSink):
                self.tasks.append(asyncio.create_task(self._resend(s), name=f"alerts-resend-{s.name}"))
        return self.tasks

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.tick_interval)

    async def _resend(self, sink: AlertmanagerSink) -> None:
        """Keep firing alerts alive in Alertmanager; only when the sink's queue is empty, so a queued resolve
        is never overtaken by a stale firing."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=sink.resend_interval)
            sender = self.senders[sink.name]
            if self._stopping.is_set() or sender.broken:
                continue
            try:
                if await asyncio.to_thread(self.db.pending_count, sink.name):
                    continue
                active = self.pipeline.active_alerts(sink.name)
                if active:
                    await sink.post(
                        [to_alertmanager(a, since, self.config.dashboard_url) for a, since in active]
                    )
            except SinkError as exc:
                log.warning("alertmanager_resend_failed", sink=sink.name, error=str(exc))
            except Exception as exc:
                log.warning("alertmanager_resend_failed", sink=sink.name, error=type(exc).__name__)

    async def _sink_broken(self, sink: Sink, exc: SinkError) -> None:
        self.pipeline.mark_broken(sink.name)
        await self.pipeline.emit(
            Alert(
                f"sink_broken:{sink.name}",
                Severity.CRITICAL,
                True,
                f"alert sink {sink.name} is broken",
                f"{sink.type} sink {sink.name} ({sink.describe()}) refused a message for good: {exc}. "
                "Its queued "
                "messages were dropped; fix its config and restart keywatch.",
                datetime.now(UTC),
                labels={"sink": sink.name},
                fields={"action": "stopped sending to this sink"},
            )
        )

    async def stop(self, grace: float = 15.0) -> None:
        """Send waiting groups, let in-flight deliveries finish, then stop; undelivered rows wait
        in the outbox for the next start."""
        try:
            await self.pipeline.flush()
        except Exception:
            log.exception("alert_flush_failed")
        self._stopping.set()
        for sender in self.senders.values():
            sender.stop()
        if self.tasks:
            _, still = await asyncio.wait(self.tasks, timeout=grace)
            for t in still:
                t.cancel()
        for s in self.sinks:
            await s.aclose()


# -- daemon extension ------------------------------------------------------------------------------
async def setup(daemon: Any) -> None:
    from keywatch.redact import REGISTRY
    from keywatch.settings import ConfigError

    inventory = daemon.inventory
    config = alerts_config(inventory.config)
    http = make_http_client()
    try:
        sinks, secrets = build_sinks(
            config, http, allow_literal=inventory.config.daemon.allow_literal_secrets
        )
    except SinkConfigError as exc:
        await http.aclose()
        raise ConfigError(inventory.source, exc.problems) from None
    REGISTRY.add(secrets)
    if not sinks:
        sinks = [ConsoleSink("log")]
    metrics = AlertMetrics(daemon.metrics.registry)
    service = AlertService(config, sinks, AlertDB(daemon.store.session), metrics)
    service_state = {"inventory": inventory, "secrets": secrets, "http": http}
    daemon.alert_service = service
    daemon._alert_service_state = service_state
    daemon.alert_emitter = service.emit
    daemon.background.extend(await service.start())

    async def key_alerts(d: Any, report: Any) -> None:
        if d.inventory is not service_state["inventory"]:
            service_state["inventory"] = d.inventory
            REGISTRY.add(secrets)  # a reload replaced the redactor's list with the keys' secrets only
            if alerts_config(d.inventory.config) != config:
                log.warning("restart_needed", setting="alerts")
        if not config.default_key_alerts or getattr(d, "policy_owns_key_alerts", False):
            return  # the policy engine raises key alerts itself, with its own thresholds
        snapshot = d.tracker.snapshot()
        labels = {k.name: k.labels for k in d.inventory.keys}
        for t in report.transitions:
            alert = key_alert(t, snapshot.get(t.key), labels.get(t.key))
            if alert is not None:
                await d.emit_alert(alert)

    daemon.cycle_hooks.append(key_alerts)
    log.info(
        "alerts_ready",
        sinks=[f"{s.name} ({s.type}: {s.describe()})" for s in sinks],
        default_key_alerts=config.default_key_alerts,
    )


async def teardown(daemon: Any) -> None:
    service: AlertService | None = getattr(daemon, "alert_service", None)
    if service is None:
        return
    await service.stop()
    state = getattr(daemon, "_alert_service_state", {})
    if state.get("http") is not None:
        await state["http"].aclose()
