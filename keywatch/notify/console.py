"""Alerts into the daemon's own log: for the demo, and a floor when no other sink is configured."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog
from pydantic import Field

from keywatch.domain import Severity
from keywatch.notify.base import Delivery, Message, Sink, SinkBase, SinkConfigBase

log = structlog.get_logger("keywatch.alerts")


class ConsoleSinkConfig(SinkConfigBase):
    type: Literal["console"] = Field(description="console: the daemon's log")


class ConsoleSink(SinkBase):
    type = "console"
    config = ConsoleSinkConfig

    def __init__(
        self, name: str, *, min_severity: Severity = Severity.INFO, min_interval: float = 0.0
    ) -> None:
        self.name = name
        self.min_severity = min_severity
        self.min_interval = min_interval

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any) -> Sink:
        return cls(config.name, min_severity=Severity(config.min_severity), min_interval=config.min_interval)

    def describe(self) -> str:
        return "the daemon's log"

    async def send(self, message: Message) -> Delivery:
        for a in message.alerts:
            since = message.since.get(a.identity)
            (log.warning if a.firing else log.info)(
                "alert",
                sink=self.name,
                status="firing" if a.firing else "resolved",
                identity=a.identity,
                severity=str(a.severity),
                title=a.title,
                summary=a.summary,
                key=a.key,
                provider=a.provider,
                since=since.isoformat() if since else None,
                test=message.test or None,
                fields=dict(a.fields),
            )
        return Delivery(None, "logged")
