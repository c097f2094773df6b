"""Prometheus Alertmanager (API v2): keywatch is one more alert source, and Alertmanager does the rest.

Alertmanager forgets a firing alert after its resolve_timeout unless the source re-sends it, so the
service re-sends active alerts every `resend_interval`; a resolve carries `endsAt`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import httpx2

from keywatch.domain import Alert, Severity
from keywatch.notify.base import Delivery, Message, alert_labels, classify_http, transport_error

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


class AlertmanagerSink:
    type = "alertmanager"

    def __init__(
        self,
        name: str,
        url: str,
        http: httpx2.AsyncClient,
        *,
        timeout: float = 10.0,
        min_interval: float = 0.0,
        min_severity: Severity = Severity.INFO,
        resend_interval: float = 60.0,
    ) -> None:
        self.name = name
        self.base_url = url.rstrip("/")
        self.http = http
        self.timeout = timeout
        self.min_interval = min_interval
        self.min_severity = min_severity
        self.resend_interval = resend_interval

    def describe(self) -> str:
        return self.base_url.rpartition("@")[2] if "@" in self.base_url else self.base_url

    async def send(self, message: Message) -> Delivery:
        body = [
            to_alertmanager(a, message.since.get(a.identity), message.dashboard_url) for a in message.alerts
        ]
        return await self.post(body)

    async def post(self, body: list[dict[str, Any]]) -> Delivery:
        try:
            r = await self.http.post(f"{self.base_url}/api/v2/alerts", json=body, timeout=self.timeout)
        except httpx2.HTTPError as exc:
            raise transport_error(exc) from None
        err = classify_http(r.status_code, r.text, r.headers)
        if err is not None:
            raise err
        return Delivery(r.status_code)

    async def aclose(self) -> None:
        return None
