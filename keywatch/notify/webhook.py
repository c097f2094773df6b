"""Generic JSON webhooks, signed as the Standard Webhooks specification says (standardwebhooks.com), so
any of its libraries verifies a delivery and the receiver can tell keywatch from anyone who learned the URL.

Headers: `webhook-id` (the delivery id: globally unique, the same on every retry, see keywatch.notify.ids),
`webhook-timestamp` (Unix seconds) and `webhook-signature`: `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.
<body>")>`, one such value per configured secret, separated by spaces, so a receiver keeps verifying while a
secret rotates. A secret is `whsec_<base64 key>`; a secret without that prefix is used as raw bytes (the key
is its UTF-8 encoding, i.e. the receiver's secret is `whsec_` + base64 of it).

Before the Standard Webhooks headers, keywatch sent `X-Keywatch-Signature: t=<ts>,v1=<hex>` and
`X-Keywatch-Delivery: <outbox row number>`; docs/alerts-and-metrics.md says what changed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx2
from pydantic import Field, field_validator

from keywatch.notify.base import Message, Sink, alert_to_dict
from keywatch.notify.http_sink import HttpSink, HttpSinkConfig

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
PAYLOAD_VERSION = "2"
SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 24  # the specification: secrets of 24 to 64 random bytes


def secret_key(secret: str) -> bytes:
    """The HMAC key of one secret: the base64 part of `whsec_...`, else the secret's own bytes."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    return secret.encode()


def secret_problem(secret: str) -> str | None:
    """Why a resolved secret cannot sign (never quoting it), or None."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = secret_key(secret)
        except (binascii.Error, ValueError):
            return "not base64 after whsec_ (make one with `echo whsec_$(openssl rand -base64 32)`)"
        if len(key) < MIN_KEY_BYTES:
            return f"{len(key)} bytes after whsec_; at least {MIN_KEY_BYTES} are needed"
        return None
    if not secret.strip():
        return "empty (make one with `echo whsec_$(openssl rand -base64 32)`)"
    return None  # a raw secret from before whsec_: kept working as it was


def sign(secrets: Sequence[str], delivery_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_key(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets
    )


def verify(
    secret: str, body: bytes, headers: Mapping[str, str], *, tolerance: float = 300, now: float | None = None
) -> bool:
    """The receiver's check, as the Standard Webhooks libraries do it: a signature made with this secret
    over this id, timestamp and body, and a timestamp no older (or newer) than `tolerance` seconds."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        delivery_id, t = lower[ID_HEADER], int(lower[TIMESTAMP_HEADER])
        given = lower[SIGNATURE_HEADER].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign([secret], delivery_id, t, body).partition(",")[2]
    return any(hmac.compare_digest(expected, g.partition(",")[2]) for g in given if g.startswith("v1,"))


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
        "id": message.delivery_id,
        "test": message.test,
        "status": "firing" if message.firing else "resolved",
        "severity": str(message.severity),
        "dashboard_url": message.dashboard_url,
        "alerts": alerts,
    }


class WebhookSinkConfig(HttpSinkConfig):
    secret_fields = ("url", "secret")
    destination_fields = ("url", "secret")

    type: Literal["webhook"] = Field(description="webhook: a signed JSON POST (Standard Webhooks)")
    secret: str | list[str] | None = Field(
        None,
        description="A secret reference to the signing secret (`whsec_<base64>`), or a list of them while a "
        "secret rotates: each signs, and webhook-signature carries one signature per secret",
    )

    @field_validator("secret")
    @classmethod
    def _secrets(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list: leave `secret` out for unsigned deliveries")
            if len(v) > 5:
                raise ValueError("at most 5 secrets at once (the old and the new one while rotating)")
        return v

    @classmethod
    def check_secret(cls, field_name: str, value: str) -> str | None:
        return secret_problem(value) if field_name == "secret" else None


class WebhookSink(HttpSink):
    type = "webhook"
    config = WebhookSinkConfig

    def __init__(
        self,
        name: str,
        url: str,
        http: httpx2.AsyncClient,
        *,
        secret: str | Sequence[str] | None = None,
        **kw: Any,
    ):
        super().__init__(name, url, http, **kw)
        self._secrets: tuple[str, ...] = (
            () if secret is None else (secret,) if isinstance(secret, str) else tuple(secret)
        )

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any, **extra: Any) -> Sink:
        signing = [v for k, v in secrets.items() if k == "secret" or k.startswith("secret[")]
        return super().from_config(config, secrets, http, secret=signing or None, **extra)

    def describe(self) -> str:
        n = len(self._secrets)
        signed = "unsigned" if not n else "signed" if n == 1 else f"signed with {n} secrets"
        return super().describe() + f" ({signed})"

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.url, *self._secrets) if s)

    def body(self, message: Message) -> bytes:
        return json.dumps(payload(message), separators=(",", ":")).encode()

    def headers(self, message: Message, body: bytes) -> dict[str, str]:
        t = int(time.time())
        headers = {"User-Agent": "keywatch", ID_HEADER: message.delivery_id, TIMESTAMP_HEADER: str(t)}
        if self._secrets:
            headers[SIGNATURE_HEADER] = sign(self._secrets, message.delivery_id, t, body)
        return headers
