"""Consumers told at promote: the moment the destinations switch to the new key, keywatch tells whoever
holds a copy of the old one.

- the pools holding the key are republished at once with the new secret (Redis sets, pool files:
  keywatch.pools.promoted);
- `promote_command` on the key: a command (argv, no shell) run with the rotation's facts as its
  environment (`KEYWATCH_KEY`, `KEYWATCH_PROVIDER`, `KEYWATCH_ROTATION`, `KEYWATCH_FINGERPRINT`,
  `KEYWATCH_PREVIOUS_FINGERPRINT`, `KEYWATCH_DESTINATIONS`, and PATH, HOME, LANG, LC_ALL, TZ: not the
  daemon's environment, which may hold secrets), never the secret: it reads the key from the destination,
  as the application does (for example `systemctl reload myapp`);
- `promote_webhook` on the key: a URL or a secret reference to one (`env:NAME`: a webhook URL often holds
  a token); a JSON POST (`type` "key.rotated"), signed the Standard Webhooks way with
  `rotation.webhook_secret`, by the same code as the alert webhooks (keywatch.notify.webhook), never
  carrying the secret; errors show the URL masked.

A consumer that fails does not stop the rotation (the destinations already hold the new key and the old
one keeps working through grace): `tell()` returns what failed, without any secret, for the rotation's row
and the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog

from keywatch.domain import ManagedKey
from keywatch.notify.base import mask_url
from keywatch.notify.ids import new_delivery_id
from keywatch.notify.webhook import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from keywatch.pools import promoted as republish_pools
from keywatch.redact import REGISTRY

log = structlog.get_logger("keywatch.rotation")
EVENT_TYPE = "key.rotated"


@dataclass(frozen=True)
class Promotion:
    """What a consumer is told: names and fingerprints, never a secret."""

    rotation: str
    key: str
    provider: str
    fingerprint: str
    previous_fingerprint: str
    destinations: tuple[str, ...]
    at: float  # unix seconds

    def payload(self, delivery_id: str) -> dict[str, Any]:
        return {
            "id": delivery_id,
            "type": EVENT_TYPE,
            "timestamp": self.at,
            "data": {
                "rotation": self.rotation,
                "key": self.key,
                "provider": self.provider,
                "fingerprint": self.fingerprint,
                "previous_fingerprint": self.previous_fingerprint,
                "destinations": list(self.destinations),
            },
        }

    def environment(self) -> dict[str, str]:
        return {
            "KEYWATCH_KEY": self.key,
            "KEYWATCH_PROVIDER": self.provider,
            "KEYWATCH_ROTATION": self.rotation,
            "KEYWATCH_FINGERPRINT": self.fingerprint,
            "KEYWATCH_PREVIOUS_FINGERPRINT": self.previous_fingerprint,
            "KEYWATCH_DESTINATIONS": ",".join(self.destinations),
        }


async def run_command(argv: Sequence[str], p: Promotion, timeout: float) -> str | None:
    """Run the hook; None when it exited 0, else what went wrong (no output is quoted: it may hold anything)."""
    # Only what a command needs to run, and the rotation's facts: never the daemon's own environment, which
    # may hold secrets (env: references).
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ") if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(p.environment())
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        return f"promote_command {argv[0]!r} could not start: {exc.strerror or type(exc).__name__}"
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"promote_command {argv[0]!r} ran past {timeout:g}s and was killed"
    return None if code == 0 else f"promote_command {argv[0]!r} exited with status {code}"


async def post_webhook(
    url: str, p: Promotion, secrets: Sequence[str], timeout: float, http: httpx2.AsyncClient | None = None
) -> str | None:
    """POST the promotion, signed (webhook-id / webhook-timestamp / webhook-signature); None on a 2xx."""
    delivery_id = new_delivery_id()
    body = json.dumps(p.payload(delivery_id), separators=(",", ":")).encode()
    t = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "keywatch",
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: str(t),
    }
    if secrets:
        headers[SIGNATURE_HEADER] = sign(secrets, delivery_id, t, body)
    shown = REGISTRY.redact(mask_url(url.split("?", 1)[0]))
    try:
        if http is None:
            async with httpx2.AsyncClient(timeout=timeout) as client:
                answer = await client.post(url, content=body, headers=headers)
        else:
            answer = await http.post(url, content=body, headers=headers, timeout=timeout)
    except Exception as exc:  # httpx2 transport errors: the receiver is down, the rotation is not
        return f"promote_webhook {shown}: {type(exc).__name__}"
    if 200 <= answer.status_code < 300:
        return None
    return f"promote_webhook {shown}: HTTP {answer.status_code}"


async def tell(
    key: ManagedKey,
    p: Promotion,
    new_secret: Any,
    *,
    command: Sequence[str] | None,
    webhook: str | None,
    webhook_secrets: Sequence[str],
    timeout: float,
) -> list[str]:
    """Tell every consumer of `key`; returns the problems (empty when all were told)."""
    problems: list[str] = []
    try:
        pools = await republish_pools(key.name, p.previous_fingerprint, new_secret)
        if pools:
            log.info("rotation_pools_republished", rotation=p.rotation, key=key.name, pools=pools)
    except Exception as exc:
        problems.append(f"republishing the pools: {type(exc).__name__}")
    if command:
        problem = await run_command(command, p, timeout)
        if problem:
            problems.append(problem)
    if webhook:
        problem = await post_webhook(webhook, p, webhook_secrets, timeout)
        if problem:
            problems.append(problem)
    return [REGISTRY.redact(x) for x in problems]
