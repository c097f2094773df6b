"""From an Alert to outbox rows: dedup, repeat, resolve once, flap limit, silences, grouping, routing.

The pipeline compares what is true (an identity firing or not) with what people were last told, and writes
a message only when they differ, when a repeat is due, or when severity rises. A change it may not send yet
(flap limit, silence) is held, not lost: `tick()` sends the latest state once it may.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from keywatch.domain import Alert, Severity
from keywatch.notify.base import SEVERITY_ORDER, Sink, alert_from_dict, alert_labels, alert_to_dict, at_least
from keywatch.notify.config import AlertsConfig, RouteConfig
from keywatch.notify.outbox import AlertDB, AlertState, Silence
from keywatch.runtime import NotLeader

log = structlog.get_logger("keywatch.alerts")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class AlertMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.alerts = Counter(
            "keywatch_alerts",
            "Alert messages by sink and result (sent, failed attempt, dropped)",
            ["sink", "result"],
            registry=registry,
        )
        self.pending = Gauge(
            "keywatch_alerts_pending", "Alert messages waiting in the outbox", ["sink"], registry=registry
        )
        self.sink_up = Gauge(
            "keywatch_sink_up",
            "1 when the sink's last delivery worked, 0 when failing or broken",
            ["sink"],
            registry=registry,
        )
        self.suppressed = Counter(
            "keywatch_alerts_suppressed",
            "Alerts not sent, by reason (duplicate, silenced, flapping)",
            ["reason"],
            registry=registry,
        )


def route(alert: Alert, routes: Iterable[RouteConfig], sinks: Iterable[Sink]) -> list[Sink]:
    """The sinks one alert goes to: the matching routes' sinks, or every sink when no route matches."""
    sinks = list(sinks)
    labels = alert_labels(alert)
    chosen: list[str] = []
    matched = False
    for r in routes:
        if all(labels.get(k) == v for k, v in r.match.items()) and (
            r.min_severity is None or at_least(alert.severity, Severity(r.min_severity))
        ):
            matched = True
            chosen += [n for n in r.sinks if n not in chosen]
            if not r.continue_:
                break
    names = chosen if matched else [s.name for s in sinks]
    return [s for s in sinks if s.name in names and at_least(alert.severity, s.min_severity)]


@dataclass
class _Group:
    first_at: datetime
    alerts: dict[str, Alert]


class AlertPipeline:
    def __init__(
        self,
        config: AlertsConfig,
        sinks: list[Sink],
        db: AlertDB,
        metrics: AlertMetrics | None = None,
        *,
        clock: Clock = utcnow,
        on_enqueued: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.config = config
        self.sinks = sinks
        self.db = db
        self.metrics = metrics
        self.clock = clock
        self.on_enqueued = on_enqueued
        self.broken: set[str] = set()
        self.states: dict[str, AlertState] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._retry: list[Alert] = []
        self._lock = asyncio.Lock()
        self._last_purge: datetime | None = None

    async def start(self) -> None:
        self.states = await asyncio.to_thread(self.db.load_states)

    # -- entry points ---------------------------------------------------------------------------
    async def emit(self, alert: Alert) -> None:
        """The daemon's alert emitter. Grouped alerts wait for group_wait; others are decided now."""
        group = alert.labels.get("group") or alert.fields.get("group")
        if group and self.config.group_wait > 0:
            key = (alert.provider or "", group)
            g = self._groups.get(key)
            if g is None:
                g = self._groups[key] = _Group(self.clock(), {})
            g.alerts.pop(alert.identity, None)
            g.alerts[alert.identity] = alert
            return
        await self._process([alert])

    async def tick(self) -> None:
        """Flush groups whose wait is over, retry unsaved decisions, send held changes and due repeats."""
        now = self.clock()
        wait = timedelta(seconds=self.config.group_wait)
        for key, g in list(self._groups.items()):
            if now - g.first_at >= wait:
                del self._groups[key]
                await self._process(list(g.alerts.values()))
        if self._retry:
            retry, self._retry = self._retry, []
            await self._process(retry)
        due = [alert_from_dict(st.alert) for st in self.states.values() if self._due(st, now)]
        if due:
            try:
                silences = await asyncio.to_thread(self.db.silences, now)
            except Exception:
                silences = []
            # Held by a silence: nothing to do until it ends (not a rewrite of the same state every tick).
            due = [a for a in due if not any(s.matches(alert_labels(a)) for s in silences)]
        if due:
            await self._process(due, reconsider=True)
        if self._last_purge is None or now - self._last_purge >= timedelta(hours=1):
            self._last_purge = now
            try:
                n = await asyncio.to_thread(self.db.purge, now - timedelta(seconds=self.config.retention))
                if n:
                    log.info("alert_outbox_purged", rows=n)
            except Exception as exc:
                log.warning("alert_outbox_purge_failed", error=type(exc).__name__)

    async def flush(self) -> None:
        """Send every waiting group now (shutdown, tests), and try once more the decisions that could not be
        saved; those still unsaved are reported, not dropped in silence."""
        groups, self._groups = self._groups, {}
        for g in groups.values():
            await self._process(list(g.alerts.values()))
        if self._retry:
            retry, self._retry = self._retry, []
            await self._process(retry)
        if self._retry:
            log.error("alerts_unwritten_at_stop", alerts=len(self._retry),
                      identities=sorted({a.identity for a in self._retry})[:20],
                      hint="the database could not be written; these alerts are decided again after a restart")

    def mark_broken(self, sink: str) -> None:
        self.broken.add(sink)

    async def reconfigure(self, config: AlertsConfig, sinks: list[Sink], fresh: set[str]) -> None:
        """A reload's routes, repeat and flap settings and sinks, for every decision from now on.
        Taken under the decision lock so one batch is routed under one config; `fresh` names sinks whose
        destination changed (their broken mark is dropped), and a sink no longer configured is forgotten."""
        async with self._lock:
            self.config = config
            self.sinks = list(sinks)
            names = {s.name for s in sinks}
            self.broken = {n for n in self.broken if n in names and n not in fresh}

    def active_alerts(self, sink: str) -> list[tuple[Alert, datetime | None]]:
        """Firing alerts people were told about that route to `sink` (Alertmanager re-sends these)."""
        out = []
        for st in self.states.values():
            if st.firing and st.notified_firing:
                alert = alert_from_dict(st.alert)
                if any(s.name == sink for s in route(alert, self.config.routes, self.sinks)):
                    out.append((alert, st.since))
        return out

    # -- decisions ------------------------------------------------------------------------------
    def _due(self, st: AlertState, now: datetime) -> bool:
        if st.firing != bool(st.notified_firing) and (st.firing or st.notified_firing):
            return self._budget_left(st, now)  # held change
        if st.firing and st.notified_firing and st.last_notified_at is not None:
            return now - st.last_notified_at >= timedelta(seconds=self.config.repeat_interval)
        return False

    def _budget_left(self, st: AlertState, now: datetime) -> bool:
        window = timedelta(seconds=self.config.flap_window)
        return sum(1 for t in st.recent if now - t < window) < self.config.flap_limit

    async def _process(self, alerts: list[Alert], reconsider: bool = False) -> None:
        async with self._lock:
            now = self.clock()
            try:
                silences = await asyncio.to_thread(self.db.silences, now)
            except Exception as exc:
                log.warning("silences_unavailable", error=type(exc).__name__)
                silences = []
            changed: dict[str, AlertState] = {}
            to_send: list[tuple[Alert, datetime | None]] = []
            for alert in alerts:
                st = changed.get(alert.identity) or self.states.get(alert.identity)
                st, send = self._decide(alert, st, now, silences, reconsider)
                changed[alert.identity] = st
                if send is not None:
                    to_send = [x for x in to_send if x[0].identity != send.identity]
                    to_send.append((send, st.since))
            rows = self._rows(to_send)
            try:
                await asyncio.to_thread(self.db.commit, list(changed.values()), rows, now)
            except NotLeader as exc:
                if exc.unconfirmed:  # still this instance's term, once a heartbeat confirms it
                    if not reconsider:
                        self._retry.extend(alerts)
                    return
                # Deposed: the new leader loads the alert states and decides these again from the keys.
                log.info("alerts_left_to_leader", alerts=len(alerts))
                return
            except Exception as exc:
                log.error("alert_outbox_write_failed", error=type(exc).__name__, alerts=len(alerts))
                if not reconsider:
                    self._retry.extend(alerts)
                return
            self.states.update(changed)
        if rows and self.on_enqueued is not None:
            self.on_enqueued({sink for sink, _ in rows})

    def _decide(
        self, alert: Alert, st: AlertState | None, now: datetime, silences: list[Silence], reconsider: bool
    ) -> tuple[AlertState, Alert | None]:
        if st is None:
            st = AlertState(
                alert.identity, False, None, str(alert.severity), None, None, [], alert_to_dict(alert), now
            )
        else:
            st = replace(st, recent=list(st.recent))
        if not alert.firing:
            # A resolve goes where the firing went, with the labels it fired with (alertname, health):
            # Alertmanager ends the alert whose labels match, and routes and silences see the same alert.
            fired = st.alert.get("labels") or {}
            fired_fields = st.alert.get("fields") or {}
            kept = {k: fired_fields[k] for k in ("kind",) if k in fired_fields}
            fired_labels = dict(fired)
            if "alertname" not in fired_labels and st.firing:
                fired_labels["alertname"] = alert_labels(alert_from_dict(st.alert))["alertname"]
            health = fired_fields.get("health")
            if health and st.firing and "health" not in fired_labels:
                fired_labels["health"] = health
            alert = replace(alert, severity=Severity(st.severity), labels={**alert.labels, **fired_labels},
                            fields={**alert.fields, **kept})
        if alert.firing and not st.firing:
            st.since = alert.at
        st.firing = alert.firing
        st.alert = alert_to_dict(alert)
        st.updated_at = now
        window = timedelta(seconds=self.config.flap_window)
        st.recent = [t for t in st.recent if now - t < window]

        reason = self._hold_reason(alert, st, now, silences)
        if reason is not None:
            if reason != "nothing_new" and self.metrics is not None and not reconsider:
                self.metrics.suppressed.labels(reason).inc()
            return st, None
        st.notified_firing = st.firing
        st.last_notified_at = now
        st.severity = str(alert.severity)
        st.recent.append(now)
        if len(st.recent) >= self.config.flap_limit:
            until = min(st.recent) + window
            alert = replace(
                alert,
                fields={
                    **alert.fields,
                    "note": "flapping: further changes are held until " + until.strftime("%H:%M UTC"),
                },
            )
        return st, alert

    def _hold_reason(
        self, alert: Alert, st: AlertState, now: datetime, silences: list[Silence]
    ) -> str | None:
        told = st.notified_firing
        if alert.firing and told:
            rising = SEVERITY_ORDER[alert.severity] > SEVERITY_ORDER[Severity(st.severity)]
            repeat_due = st.last_notified_at is None or now - st.last_notified_at >= timedelta(
                seconds=self.config.repeat_interval
            )
            if not rising and not repeat_due:
                return "duplicate"
        if not alert.firing and not told:
            return "nothing_new"  # never told it fired (or already told it resolved): stay quiet
        labels = alert_labels(alert)
        if any(s.matches(labels) for s in silences):
            return "silenced"
        if not self._budget_left(st, now):
            return "flapping"
        return None

    def _rows(self, to_send: list[tuple[Alert, datetime | None]]) -> list[tuple[str, dict[str, Any]]]:
        per_sink: dict[str, list[tuple[Alert, datetime | None]]] = {}
        for alert, since in to_send:
            for sink in route(alert, self.config.routes, self.sinks):
                if sink.name in self.broken:
                    if self.metrics is not None:
                        self.metrics.alerts.labels(sink.name, "dropped").inc()
                    continue
                per_sink.setdefault(sink.name, []).append((alert, since))
        return [
            (
                name,
                {
                    "alerts": [alert_to_dict(a) for a, _ in items],
                    "since": {a.identity: s.isoformat() for a, s in items if s is not None},
                },
            )
            for name, items in per_sink.items()
        ]
