"""What every sink shares: the message it is handed, the one error it raises, and how HTTP answers are read.

A sink turns one Message (one alert, or a group of alerts that belong together) into one request.
It never retries: the sender does, from the outbox, so a retry survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from keywatch.domain import Alert, Severity
from keywatch.redact import redact_text

SEVERITY_ORDER = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405, 410, 413, 422})


class SinkError(Exception):
    """A delivery that did not succeed. `permanent`: retrying cannot help (the sink is broken until a person
    fixes it); otherwise the sender retries, no sooner than `retry_after` seconds when the sink said so."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class Delivery:
    """The sink's answer to a delivery that worked, as `keywatch alert test` shows it."""

    status: int | None
    detail: str = ""


@dataclass(frozen=True)
class Message:
    """One outbox row as a sink sees it. `id` stays the same across retries and restarts: receivers
    may dedupe on it."""

    id: int
    alerts: list[Alert]
    since: dict[str, datetime] = field(default_factory=dict)  # identity -> when it started firing
    dashboard_url: str | None = None
    test: bool = False

    @property
    def firing(self) -> bool:
        return any(a.firing for a in self.alerts)

    @property
    def severity(self) -> Severity:
        return max((a.severity for a in self.alerts), key=lambda s: SEVERITY_ORDER[s])


class Sink(Protocol):
    name: str
    type: str
    min_interval: float
    min_severity: Severity

    def describe(self) -> str:
        """Where messages go, with any secret part masked."""
        ...

    async def send(self, message: Message) -> Delivery:
        """Deliver one message or raise SinkError."""
        ...

    async def aclose(self) -> None: ...


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    return {
        "identity": alert.identity,
        "severity": str(alert.severity),
        "firing": alert.firing,
        "title": alert.title,
        "summary": alert.summary,
        "at": alert.at.isoformat(),
        "key": alert.key,
        "provider": alert.provider,
        "labels": dict(alert.labels),
        "fields": dict(alert.fields),
    }


def alert_from_dict(d: dict[str, Any]) -> Alert:
    return Alert(
        identity=d["identity"],
        severity=Severity(d["severity"]),
        firing=bool(d["firing"]),
        title=d["title"],
        summary=d["summary"],
        at=parse_time(d["at"]),
        key=d.get("key"),
        provider=d.get("provider"),
        labels=dict(d.get("labels") or {}),
        fields=dict(d.get("fields") or {}),
    )


def parse_time(text: str) -> datetime:
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def alert_labels(alert: Alert) -> dict[str, str]:
    """What routes and silences match on: the alert's own labels plus key, provider, severity, identity."""
    out = dict(alert.labels)
    out["severity"] = str(alert.severity)
    out["identity"] = alert.identity
    out["alertname"] = alert.identity.partition(":")[0]
    if alert.key:
        out["key"] = alert.key
    if alert.provider:
        out["provider"] = alert.provider
    return out


def at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[minimum]


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/****`: enough to tell two sinks apart, not enough to post."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "****"
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]
    if not path:
        return f"{scheme}://{host}"
    parts = path.split("?")[0].split("/")
    return (
        f"{scheme}://{host}/" + "/".join([*parts[:-1], "****"])
        if len(parts) > 1
        else f"{scheme}://{host}/****"
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_http(status: int, body: str, headers: Any, secrets: tuple[str, ...] = ()) -> SinkError | None:
    """None for success; otherwise the error the sender acts on (permanent or transient)."""
    if 200 <= status < 300:
        return None
    detail = redact_text(" ".join(body.split())[:200], secrets) or "(no body)"
    retry_after = parse_retry_after(headers.get("retry-after"))
    permanent = status in PERMANENT_STATUS or (400 <= status < 500 and status not in (408, 409, 425, 429))
    return SinkError(f"HTTP {status}: {detail}", permanent=permanent, retry_after=retry_after, status=status)


def transport_error(exc: BaseException, secrets: tuple[str, ...] = ()) -> SinkError:
    """A connection failure or timeout: transient, and its text never carries the URL."""
    name = type(exc).__name__
    text = redact_text(str(exc), secrets)
    for s in secrets:
        text = text.replace(s, "****")
    if "://" in text:
        text = ""
    return SinkError(f"{name}: {text}"[:200].rstrip(": ") if text else name)
