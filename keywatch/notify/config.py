"""The `[alerts]` section: sinks, routes, and the knobs that keep alerting quiet.

Each sink type's model lives in its sink module; `sinks` validates against their union (by `type`, see
keywatch.notify.registry). It uses keywatch.settings.types only: the settings schema imports this module.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from keywatch.notify.base import SeverityName
from keywatch.notify.registry import SinkConfig, sink_errors
from keywatch.settings.types import Duration, Strict


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
        True,
        description="No effect: key alerts are decided by policies, the built-in ones included "
        "(safety.default_policies); accepted so existing configs still load, with a warning",
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

    @field_validator("sinks", mode="wrap")
    @classmethod
    def _sink_paths(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(v)
        except ValidationError as exc:
            raise sink_errors(exc) from None

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
