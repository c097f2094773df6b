"""Alerts into the daemon's own log: for the demo, and a floor when no other sink is configured."""

from __future__ import annotations

import structlog

from keywatch.domain import Severity
from keywatch.notify.base import Delivery, Message

log = structlog.get_logger("keywatch.alerts")


class ConsoleSink:
    type = "console"

    def __init__(
        self, name: str, *, min_severity: Severity = Severity.INFO, min_interval: float = 0.0
    ) -> None:
        self.name = name
        self.min_severity = min_severity
        self.min_interval = min_interval

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

    async def aclose(self) -> None:
        return None
