"""Generic JSON webhooks, signed so the receiver can tell keywatch from anyone who learned the URL.

Signature: `X-Keywatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
The timestamp is inside the signed material, so a receiver that rejects old timestamps also rejects replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx2
from pydantic import Field

from keywatch.notify.base import Message, Sink, alert_to_dict
from keywatch.notify.http_sink import HttpSink, HttpSinkConfig

SIGNATURE_HEADER = "X-Keywatch-Signature"
DELIVERY_HEADER = "X-Keywatch-Delivery"
PAYLOAD_VERSION = "1"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(
    secret: str, body: bytes, header: str, *, tolerance: float = 300, now: float | None = None
) -> bool:
    """The receiver's check (the README shows the same recipe): right key, right body, not stale."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


def payload(message: Message) -> dict[str, Any]:
    alerts = []
    for a in message.alerts:
        d = alert_to_dict(a)
        d["status"] = "firing" if a.firing else "resolved"
        since = message.since.get(a.identity)
        d["since"] = since.isoformat() if since else None
        alerts.append(d)
    return {
        "version": PAYLOAD_VERSION,
        "id": message.id,
        "test": message.test,
        "status": "firing" if message.firing else "resolved",
        "severity": str(message.severity),
        "dashboard_url": message.dashboard_url,
        "alerts": alerts,
    }


class WebhookSinkConfig(HttpSinkConfig):
    secret_fields = ("url", "secret")
    destination_fields = ("url", "secret")

    type: Literal["webhook"] = Field(description="webhook: a signed JSON POST")
    secret: str | None = Field(
        None, description="A secret reference to the HMAC-SHA256 signing key (X-Keywatch-Signature)"
    )


class WebhookSink(HttpSink):
    type = "webhook"
    config = WebhookSinkConfig

    def __init__(self, name: str, url: str, http: httpx2.AsyncClient, *, secret: str | None = None, **kw: Any):
        super().__init__(name, url, http, **kw)
        self._secret = secret

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any, **extra: Any) -> Sink:
        return super().from_config(config, secrets, http, secret=secrets.get("secret"), **extra)

    def describe(self) -> str:
        return super().describe() + (" (signed)" if self._secret else " (unsigned)")

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.url, self._secret) if s)

    def body(self, message: Message) -> bytes:
        return json.dumps(payload(message), separators=(",", ":")).encode()

    def headers(self, message: Message, body: bytes) -> dict[str, str]:
        headers = {"User-Agent": "keywatch", DELIVERY_HEADER: str(message.id)}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        return headers
