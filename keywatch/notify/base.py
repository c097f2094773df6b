"""What every sink shares: the message it is handed, the one error it raises, its config's common fields,
the context its background work runs in, and how HTTP answers are read.

A sink turns one Message (one alert, or a group of alerts that belong together) into one delivery.
It never retries: the sender does, from the outbox, so a retry survives a restart.

A sink type is one module: its config model (a subclass of SinkConfigBase whose `type` is a Literal) and
its sink class (a subclass of SinkBase, or of keywatch.notify.http.HttpSink when it POSTs), listed once in
keywatch.notify.registry.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol, get_args

from pydantic import Field

from keywatch.domain import Alert, Severity
from keywatch.notify.ids import new_delivery_id
from keywatch.redact import looks_like_token, redact_text
from keywatch.settings.types import Duration, Strict

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
    """One outbox row as a sink sees it. `id` is the row's number in this database (logs only);
    `delivery_id` is globally unique, stays the same across retries and restarts, and is never reused
    (keywatch.notify.ids): receivers dedupe on it."""

    id: int
    alerts: list[Alert]
    since: dict[str, datetime] = field(default_factory=dict)  # identity -> when it started firing
    dashboard_url: str | None = None
    test: bool = False
    delivery_id: str = field(default_factory=new_delivery_id)

    @property
    def firing(self) -> bool:
        return any(a.firing for a in self.alerts)

    @property
    def severity(self) -> Severity:
        return max((a.severity for a in self.alerts), key=lambda s: SEVERITY_ORDER[s])


class SinkContext(Protocol):
    """What the alert service lends a sink's background work (see Sink.background). One context per sink
    object: it ends when the service stops or a reload removes or replaces that object."""

    @property
    def dashboard_url(self) -> str | None:
        """The `alerts.dashboard_url` in force now."""
        ...

    @property
    def broken(self) -> bool:
        """The sink refused a message for good and is not sent to until a reload fixes it."""
        ...

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; False (at once) when the work must end."""
        ...

    async def pending(self) -> int:
        """Messages still queued in the outbox for this sink."""
        ...

    def active_alerts(self) -> list[tuple[Alert, datetime | None]]:
        """Firing alerts people were told about that route to this sink, with when each started firing."""
        ...


class SinkHttp(Protocol):
    """What an HTTP sink needs of the pool the sinks share (registry.SinkClient; an httpx2 client in tests)."""

    async def post(self, url: str, **kwargs: Any) -> Any: ...


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

    def background(self, context: SinkContext) -> Coroutine[Any, Any, None] | None:
        """Work this sink needs besides deliveries (Alertmanager re-sends firing alerts), or None. The service
        runs the coroutine as one task for as long as this object is the running sink of its name; it should
        loop on `await context.wait(...)` and catch its own errors."""
        ...

    async def aclose(self) -> None: ...


SeverityName = Literal["info", "warning", "critical"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class SinkConfigBase(Strict):
    """The fields every `[[alerts.sinks]]` entry has. A sink type's model adds `type: Literal["<type>"]`
    and its own fields; the registry puts the models into one union discriminated by `type`."""

    secret_fields: ClassVar[tuple[str, ...]] = ()  # secret references, resolved when the sink is built
    destination_fields: ClassVar[tuple[str, ...]] = ()  # a change in these gives a broken sink a fresh start

    name: str = Field(
        pattern=NAME_PATTERN, description="Unique; used by routes, metrics and `alert test --sink`"
    )
    min_severity: SeverityName = Field("info", description="Alerts below this severity never reach this sink")
    min_interval: Duration = Field("0s", description="Least time between two messages to this sink")

    @classmethod
    def check_secret(cls, field_name: str, value: str) -> str | None:
        """Why a resolved secret of `field_name` cannot be used (never quoting it), or None."""
        return None

    @classmethod
    def type_name(cls) -> str:
        return str(get_args(cls.model_fields["type"].annotation)[0])


class SinkBase:
    """What a sink that needs no more does by default: no background work, nothing to close.
    Subclasses set `type` and `config`, and build themselves from their config in `from_config`."""

    type: ClassVar[str]
    config: ClassVar[type[SinkConfigBase]]
    name: str
    min_interval: float
    min_severity: Severity

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any) -> Sink:
        """The sink for one validated config; `secrets` holds the resolved values of its secret_fields."""
        raise NotImplementedError

    def background(self, context: SinkContext) -> Coroutine[Any, Any, None] | None:
        return None

    async def aclose(self) -> None:
        return None


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
    out["alertname"] = alert.labels.get("alertname") or alertname(alert)
    health = alert.labels.get("health") or alert.fields.get("health")
    if health and alert.key:
        out.setdefault("health", health)
    if alert.key:
        out["key"] = alert.key
    if alert.provider:
        out["provider"] = alert.provider
    return out


# One alertname per kind of alert, the same names as the shipped Prometheus rules where both exist
# (docs/alerts-and-metrics.md has the table with the severities; a test compares it with the code and rules).
KEY_ALERTNAMES = {
    "invalid": "KeywatchKeyInvalid",
    "quota_exhausted": "KeywatchKeyQuotaExhausted",
    "forbidden": "KeywatchKeyForbidden",
    "compromised": "KeywatchKeyCompromised",
    "rate_limited": "KeywatchKeyRateLimited",
    "budget_exhausted": "KeywatchKeyBudgetExhausted",
}
IDENTITY_ALERTNAMES = {
    "provider_outage": "KeywatchProviderOutage",
    "sink_broken": "KeywatchSinkBroken",
    "blast_radius": "KeywatchBlastRadius",
    "action_failed": "KeywatchActionFailed",
    "alerts_config_refused": "KeywatchAlertsConfigRefused",
    "budget_forecast": "KeywatchBudgetForecastExhaustion",
    "keywatch_test": "KeywatchTest",
}


# The severity of each kind as keywatch sends it (built-in policies and its own alerts) and as the shipped
# Prometheus rules label it: the table in docs/alerts-and-metrics.md, compared with both by a test.
SEVERITIES = {
    "KeywatchKeyInvalid": Severity.CRITICAL,
    "KeywatchKeyCompromised": Severity.CRITICAL,
    "KeywatchKeyQuotaExhausted": Severity.WARNING,
    "KeywatchKeyForbidden": Severity.WARNING,
    "KeywatchKeyRateLimited": Severity.WARNING,
    "KeywatchKeyBudgetExhausted": Severity.WARNING,
    "KeywatchProviderOutage": Severity.CRITICAL,
    "KeywatchBudgetNearlyUsed": Severity.WARNING,
    "KeywatchBudgetExceeded": Severity.CRITICAL,
    "KeywatchBudgetForecastExhaustion": Severity.WARNING,
    "KeywatchSinkBroken": Severity.CRITICAL,
    "KeywatchBlastRadius": Severity.CRITICAL,
    "KeywatchActionFailed": Severity.CRITICAL,
    "KeywatchAlertsConfigRefused": Severity.WARNING,
    "KeywatchTest": Severity.INFO,
    "KeywatchRotationFailed": Severity.CRITICAL,
    "KeywatchRotationDue": Severity.WARNING,
    "KeywatchSecretStore": Severity.WARNING,
    "KeywatchLeakUnmanaged": Severity.WARNING,
    "KeywatchContainmentBlocked": Severity.CRITICAL,
    "KeywatchLeakScan": Severity.CRITICAL,
    "KeywatchLeakScanUnmanaged": Severity.WARNING,
    "KeywatchUsageAnomaly": Severity.WARNING,
}


def alertname(alert: Alert) -> str:
    """The alert's kind as Alertmanager's `alertname`: a key alert by the health (or signal) it fired
    for, a budget by the threshold it crossed, anything else by its identity's prefix."""
    prefix = alert.identity.partition(":")[0]
    if prefix == "budget" and "threshold" in alert.fields:
        spent = alert.fields["threshold"].rstrip("%").isdigit() and int(alert.fields["threshold"].rstrip("%")) >= 100
        return "KeywatchBudgetExceeded" if spent else "KeywatchBudgetNearlyUsed"
    if prefix in IDENTITY_ALERTNAMES:
        return IDENTITY_ALERTNAMES[prefix]
    kind = alert.fields.get("kind") or alert.fields.get("health")
    if alert.key and kind in KEY_ALERTNAMES:
        return KEY_ALERTNAMES[kind]
    return "Keywatch" + "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", prefix) if p)


def at_least(severity: Severity, minimum: Severity) -> bool:
    return SEVERITY_ORDER[severity] >= SEVERITY_ORDER[minimum]


def mask_url(url: str) -> str:
    """`https://hooks.slack.com/services/T0/B0/****`: enough to tell two sinks apart, not enough to post.
    The last path segment and every one that looks like a token (`looks_like_token`) are masked."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "****"
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]
    if not path:
        return f"{scheme}://{host}"
    parts = path.split("?")[0].split("#")[0].split("/")
    shown = ["****" if looks_like_token(p) else p for p in parts[:-1]]
    return f"{scheme}://{host}/" + "/".join([*shown, "****"])


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
