"""From `[[alerts.sinks]]` to sink objects: one place that knows every sink type and resolves its secrets."""

from __future__ import annotations

from collections.abc import Callable

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


def _slack(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    assert url is not None
    return SlackSink(
        c.name,
        url,
        http,
        timeout=c.timeout,
        min_interval=c.effective_min_interval,
        min_severity=Severity(c.min_severity),
    )


def _webhook(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    assert url is not None
    return WebhookSink(
        c.name,
        url,
        http,
        secret=secret,
        timeout=c.timeout,
        min_interval=c.effective_min_interval,
        min_severity=Severity(c.min_severity),
    )


def _alertmanager(c: SinkConfig, url: str | None, secret: str | None, http: httpx2.AsyncClient) -> Sink:
    assert url is not None
    return AlertmanagerSink(
        c.name,
        url,
        http,
        timeout=c.timeout,
        min_interval=c.effective_min_interval,
        min_severity=Severity(c.min_severity),
        resend_interval=c.resend_interval,
    )


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


def build_sinks(
    config: AlertsConfig, http: httpx2.AsyncClient, *, allow_literal: bool = False
) -> tuple[list[Sink], list[str]]:
    """The sinks and the secret values they hold (for the log redactor). Raises SinkConfigError."""
    from keywatch.settings import secrets

    problems: list[str] = []
    sinks: list[Sink] = []
    revealed: list[str] = []
    for i, c in enumerate(config.sinks):
        resolved: dict[str, str | None] = {"url": c.url, "secret": None}
        for field in ("url", "secret"):
            ref = getattr(c, field)
            if ref is None or (field == "url" and c.type not in SECRET_URL_TYPES):
                continue
            try:
                value = secrets.resolve(ref, allow_literal=allow_literal).reveal()
            except secrets.SecretError as exc:
                problems.append(f"alerts.sinks[{i}].{field}: sink {c.name!r}: {exc}")
                continue
            resolved[field] = value
            revealed.append(value)
        if problems:
            continue
        sinks.append(BUILDERS[c.type](c, resolved["url"], resolved["secret"], http))
    if problems:
        raise SinkConfigError(problems)
    return sinks, revealed
