"""Prometheus Alertmanager (API v2): keywatch is one more alert source, and Alertmanager does the rest.

Alertmanager forgets a firing alert after its resolve_timeout unless the source re-sends it, so the
sink's background work re-sends active alerts every `resend_interval`; a resolve carries `endsAt`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from pydantic import Field

from keywatch.domain import Alert
from keywatch.notify.base import Message, Sink, SinkContext, SinkError, SinkHttp, alert_labels
from keywatch.notify.http_sink import HttpSink, HttpSinkConfig
from keywatch.settings.types import Duration

log = structlog.get_logger("keywatch.alerts")

_LABEL_RE = re.compile(r"[^a-zA-Z0-9_]")


def _label_name(name: str) -> str:
    n = _LABEL_RE.sub("_", name)
    return n if n and not n[0].isdigit() else "_" + n


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def to_alertmanager(alert: Alert, since: datetime | None, generator_url: str | None) -> dict[str, Any]:
    labels = {_label_name(k): v for k, v in alert_labels(alert).items() if v}
    annotations = {"title": alert.title, "summary": alert.summary}
    for k, v in alert.fields.items():
        if v:
            annotations[_label_name(k)] = v
    out: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": _ts(since or alert.at)}
    if not alert.firing:
        out["endsAt"] = _ts(max(alert.at, since) if since else alert.at)
    if generator_url:
        out["generatorURL"] = generator_url
    return out


def encode(alerts: list[dict[str, Any]]) -> bytes:
    return json.dumps(alerts, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class AlertmanagerSinkConfig(HttpSinkConfig):
    secret_fields = ()

    type: Literal["alertmanager"] = Field(description="alertmanager: Prometheus Alertmanager API v2")
    url: str = Field(
        min_length=1, description="The Alertmanager base URL (not a secret), e.g. http://127.0.0.1:9093"
    )
    resend_interval: Duration = Field(
        "1m", description="How often firing alerts are re-sent so Alertmanager keeps them active"
    )

    @classmethod
    def check_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("expected the Alertmanager base URL, e.g. http://127.0.0.1:9093")
        return v


class AlertmanagerSink(HttpSink):
    type = "alertmanager"
    config = AlertmanagerSinkConfig

    def __init__(
        self, name: str, url: str, http: SinkHttp, *, resend_interval: float = 60.0, **kw: Any
    ) -> None:
        super().__init__(name, url.rstrip("/"), http, **kw)
        self.resend_interval = resend_interval

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any, **extra: Any) -> Sink:
        return super().from_config(config, secrets, http, resend_interval=config.resend_interval, **extra)

    @property
    def endpoint(self) -> str:
        return f"{self.url}/api/v2/alerts"

    def describe(self) -> str:
        return self.url.rpartition("@")[2] if "@" in self.url else self.url

    def body(self, message: Message) -> bytes:
        return encode(
            [to_alertmanager(a, message.since.get(a.identity), message.dashboard_url) for a in message.alerts]
        )

    def background(self, context: SinkContext) -> Coroutine[Any, Any, None]:
        return self._resend(context)

    async def _resend(self, context: SinkContext) -> None:
        """Keep firing alerts alive in Alertmanager; only when the queue is empty, so a queued resolve is
        never overtaken by a stale firing."""
        while await context.wait(self.resend_interval):
            if context.broken:
                continue
            try:
                if await context.pending():
                    continue
                active = context.active_alerts()
                if active:
                    await self.post(encode([to_alertmanager(a, s, context.dashboard_url) for a, s in active]))
            except SinkError as exc:
                log.warning("alertmanager_resend_failed", sink=self.name, error=str(exc))
            except Exception as exc:
                log.warning("alertmanager_resend_failed", sink=self.name, error=type(exc).__name__)
