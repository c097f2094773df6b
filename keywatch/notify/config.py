"""The `[alerts]` section: sinks, routes, and the knobs that keep alerting quiet.

It uses keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from keywatch.settings.types import Duration, Strict

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
SINK_TYPES = ("slack", "webhook", "alertmanager", "console")
SeverityName = Literal["info", "warning", "critical"]
SECRET_URL_TYPES = ("slack", "webhook")


class SinkConfig(Strict):
    name: str = Field(
        pattern=_NAME_PATTERN, description="Unique; used by routes, metrics and `alert test --sink`"
    )
    type: Literal["slack", "webhook", "alertmanager", "console"] = Field(
        description="slack: incoming webhook; webhook: signed JSON POST; alertmanager: Prometheus "
        "Alertmanager "
        "API v2; console: the daemon's log"
    )
    url: str | None = Field(
        None,
        description="slack/webhook: a secret reference to the URL (env:NAME, file:/path, credential:NAME), "
        "since "
        "the URL itself grants posting; alertmanager: the base URL, e.g. http://127.0.0.1:9093",
    )
    secret: str | None = Field(
        None, description="webhook: secret reference to the HMAC-SHA256 signing key (X-Keywatch-Signature)"
    )
    min_severity: SeverityName = Field("info", description="Alerts below this severity never reach this sink")
    timeout: Duration = Field("10s", description="Time one delivery attempt may take")
    min_interval: Duration | None = Field(
        None, description="Least time between two messages to this sink (default: 1s for slack, 0 otherwise)"
    )
    resend_interval: Duration = Field(
        "1m",
        description="alertmanager: how often firing alerts are re-sent so Alertmanager keeps them active",
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> SinkConfig:
        problems = []
        if self.type in ("slack", "webhook", "alertmanager") and not self.url:
            problems.append(f"url is required for a {self.type} sink")
        if self.type == "console" and self.url:
            problems.append("url is not used by a console sink")
        if self.secret and self.type != "webhook":
            problems.append(f"secret is only used by webhook sinks, not {self.type}")
        if self.type == "alertmanager" and self.url and not re.match(r"^https?://[^\s/]+", self.url):
            problems.append("url: expected the Alertmanager base URL, e.g. http://127.0.0.1:9093")
        if self.type in SECRET_URL_TYPES and self.url and self.url.startswith(("http://", "https://")):
            problems.append(
                f"url: a {self.type} URL is a secret; put it in the environment or a file and write "
                "env:NAME, file:/path or credential:NAME here"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def effective_min_interval(self) -> float:
        if self.min_interval is not None:
            return float(self.min_interval)
        return 1.0 if self.type == "slack" else 0.0


class RouteConfig(Strict):
    match: dict[str, str] = Field(
        default_factory=dict,
        description="Every pair must equal the alert's label of that name (key, provider, severity, "
        "identity and "
        "the key's labels such as team); empty matches all",
    )
    min_severity: SeverityName | None = Field(None, description="Only alerts at or above this severity")
    sinks: list[str] = Field(min_length=1, description="Names of the sinks that receive matching alerts")
    continue_: bool = Field(
        False,
        alias="continue",
        description="true: later routes are tried too; false: the first match decides",
    )

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


class AlertsConfig(Strict):
    repeat_interval: Duration = Field("4h", description="A still-firing alert is repeated this often")
    group_wait: Duration = Field(
        "30s",
        description="Alerts with the same provider and `group` label arriving within this window make one "
        "message (one message for a provider outage, not one per key)",
    )
    dashboard_url: str | None = Field(
        None, description="Link added to every message, e.g. a Grafana dashboard"
    )
    default_key_alerts: bool = Field(
        True, description="Turn key health changes into alerts (key_health:<key>) when no policy emits them"
    )
    flap_limit: int = Field(
        6,
        ge=2,
        le=1000,
        description="At most this many messages per alert identity per flap_window; further "
        "changes are held and the latest state is sent when the window allows",
    )
    flap_window: Duration = Field("1h", description="Window of flap_limit")
    retry_base: Duration = Field(
        "5s", description="First retry delay of a failed delivery (doubles each time)"
    )
    retry_max: Duration = Field("10m", description="Longest delay between two delivery attempts")
    retention: Duration = Field("7d", description="Delivered messages are deleted from the outbox after this")
    sinks: list[SinkConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> AlertsConfig:
        problems = []
        seen: dict[str, int] = {}
        for i, s in enumerate(self.sinks):
            if s.name in seen:
                problems.append(f"sinks[{i}].name: {s.name!r} is already used by sinks[{seen[s.name]}]")
            seen.setdefault(s.name, i)
        for i, r in enumerate(self.routes):
            for name in r.sinks:
                if name not in seen:
                    known = ", ".join(seen) or "none"
                    problems.append(f"routes[{i}].sinks: no sink named {name!r} (known: {known})")
        if self.retry_base <= 0:
            problems.append("retry_base: must be more than 0")
        if self.retry_max < self.retry_base:
            problems.append("retry_max: must not be less than retry_base")
        if self.dashboard_url and not re.match(r"^https?://[^\s/]+", self.dashboard_url):
            problems.append("dashboard_url: expected an http(s) URL")
        if problems:
            raise ValueError("; ".join(problems))
        return self
