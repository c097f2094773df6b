"""Generic JSON webhooks, signed so the receiver can tell keywatch from anyone who learned the URL.

Signature: `X-Keywatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
The timestamp is inside the signed material, so a receiver that rejects old timestamps also rejects replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx2

from keywatch.domain import Severity
from keywatch.notify.base import Delivery, Message, alert_to_dict, classify_http, mask_url, transport_error

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


class WebhookSink:
    type = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        http: httpx2.AsyncClient,
        *,
        secret: str | None = None,
        timeout: float = 10.0,
        min_interval: float = 0.0,
        min_severity: Severity = Severity.INFO,
    ) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        self.http = http
        self.timeout = timeout
        self.min_interval = min_interval
        self.min_severity = min_severity

    def describe(self) -> str:
        return mask_url(self._url) + (" (signed)" if self._secret else " (unsigned)")

    async def send(self, message: Message) -> Delivery:
        body = json.dumps(payload(message), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "keywatch",
            DELIVERY_HEADER: str(message.id),
        }
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        secrets = tuple(s for s in (self._url, self._secret) if s)
        try:
            r = await self.http.post(self._url, content=body, headers=headers, timeout=self.timeout)
        except httpx2.HTTPError as exc:
            raise transport_error(exc, secrets) from None
        err = classify_http(r.status_code, r.text, r.headers, secrets)
        if err is not None:
            raise err
        return Delivery(r.status_code)

    async def aclose(self) -> None:
        return None
