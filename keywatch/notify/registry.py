"""From `[[alerts.sinks]]` to sink objects: one place that knows every sink type and resolves its secrets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from keywatch.domain import Severity
from keywatch.notify.alertmanager import AlertmanagerSink
from keywatch.notify.base import Sink
from keywatch.notify.config import SECRET_URL_TYPES, AlertsConfig, SinkConfig
from keywatch.notify.console import ConsoleSink
from keywatch.notify.slack import SlackSink
from keywatch.notify.webhook import WebhookSink


class SinkConfigError(Exception):
    """Sink secrets that cannot be resolved; each problem names the field and never the secret."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _http_sink(
    cls: Callable[..., Sink], c: SinkConfig, url: str | None, http: httpx2.AsyncClient, **extra: object
) -> Sink:
    """The HTTP sinks take the same delivery settings from their config; only their own extras differ."""
    assert url is not None
    return cls(
        c.name,
        url,
        http,
        timeout=c.timeout,
        min_interval=c.effective_min_interval,
        min_severity=Severity(c.min_severity),
        **extra,
    )


def _slack(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    return _http_sink(SlackSink, c, url, http)


def _webhook(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    return _http_sink(WebhookSink, c, url, http, secret=secret)


def _alertmanager(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    return _http_sink(AlertmanagerSink, c, url, http, resend_interval=c.resend_interval)


def _console(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    return ConsoleSink(c.name, min_severity=Severity(c.min_severity), min_interval=c.effective_min_interval)


BUILDERS: dict[str, Callable[[SinkConfig, str | None, str | None, httpx2.AsyncClient], Sink]] = {
    "slack": _slack,
    "webhook": _webhook,
    "alertmanager": _alertmanager,
    "console": _console,
}


def make_http_client() -> httpx2.AsyncClient:
    """Sinks share one pool; redirects are refused so a webhook URL cannot bounce a signed body elsewhere."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(10.0),
        follow_redirects=False,
        limits=httpx2.Limits(max_connections=20, max_keepalive_connections=10),
    )


@dataclass(frozen=True)
class SinkSpec:
    """One sink's config with its secrets resolved: two equal specs make the same sink, so a reload can
    tell a sink that changed (new webhook URL in the same file, say) from one that did not."""

    config: SinkConfig
    url: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def destination(self) -> tuple[str, str | None, str | None]:
        """What decides where messages go and how they are signed: a change here gives a broken sink
        a fresh start."""
        return (self.config.type, self.url, self.secret)

    def secrets(self) -> list[str]:
        return [
            v
            for v, is_secret in ((self.url, self.config.type in SECRET_URL_TYPES), (self.secret, True))
            if v and is_secret
        ]

    def build(self, http: httpx2.AsyncClient) -> Sink:
        return BUILDERS[self.config.type](self.config, self.url, self.secret, http)


def resolve_sinks(config: AlertsConfig, *, allow_literal: bool = False) -> list[SinkSpec]:
    """Every sink's secrets, or SinkConfigError listing each reference that failed (by field, never by
    value)."""
    from keywatch.settings import secrets

    problems: list[str] = []
    specs: list[SinkSpec] = []
    for i, c in enumerate(config.sinks):
        resolved: dict[str, str | None] = {"url": c.url, "secret": None}
        for field_name in ("url", "secret"):
            ref = getattr(c, field_name)
            if ref is None or (field_name == "url" and c.type not in SECRET_URL_TYPES):
                continue
            try:
                resolved[field_name] = secrets.resolve(ref, allow_literal=allow_literal).reveal()
            except secrets.SecretError as exc:
                problems.append(f"alerts.sinks[{i}].{field_name}: sink {c.name!r}: {exc}")
        specs.append(SinkSpec(c, resolved["url"], resolved["secret"]))
    if problems:
        raise SinkConfigError(problems)
    return specs


def build_sinks(
    config: AlertsConfig, http: httpx2.AsyncClient, *, allow_literal: bool = False
) -> tuple[list[Sink], list[str]]:
    """The sinks and the secret values they hold (for the log redactor). Raises SinkConfigError."""
    specs = resolve_sinks(config, allow_literal=allow_literal)
    return [s.build(http) for s in specs], [v for s in specs for v in s.secrets()]
