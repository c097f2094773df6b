"""The leak receivers: aiohttp handlers mounted on the daemon's HTTP server (web.Routes).

Every receiver checks, in this order, and acts on nothing it refuses: the body size (413), the content
type (415), the signature or token (401), the body's shape (400); GitHub's webhook also the event (400)
and the delivery id (409 for a replay). What passes is handed to `Intake` (keywatch.leaks.service), which
records it durably before the answer goes out and contains matched keys in the background.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from keywatch.domain import Secret
from keywatch.leaks.intake import Incoming, clean_location
from keywatch.leaks.signatures import bearer_ok, ecdsa_ok, hmac_sha256_ok

if TYPE_CHECKING:
    from keywatch.leaks.github import PublicKeys

log = structlog.get_logger("keywatch.leaks")

GITHUB_ACTIONS_EXPOSED = ("created", "reopened", "validated", "publicly_leaked")
MAX_ITEMS = 100  # tokens or findings in one request


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Intake(Protocol):
    async def github_alert(self, delivery: str, action: str, payload: dict[str, Any]) -> str | None: ...
    async def submit(self, items: list[Incoming]) -> list[str | None]: ...
    def refused(self, receiver: str, status: int) -> None: ...


def answer(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"status": status, "message": message, **extra}, status=status)


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise Refused(413, f"body over {limit} bytes (leaks.max_body)")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"body over {limit} bytes (leaks.max_body)")
        chunks.append(chunk)
    return b"".join(chunks)


def json_only(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise Refused(415, "Content-Type must be application/json")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, "the body is not JSON") from None


def _str(d: dict[str, Any], name: str, where: str, *, required: bool = True, limit: int = 4096) -> str | None:
    v = d.get(name)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > limit:
        raise Refused(400, f"{where}.{name}: expected a non-empty string (at most {limit} characters)")
    return v


def guarded(
    name: str, intake: Intake, handler: Callable[[web.Request], Awaitable[web.Response]]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def run(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Refused as r:
            intake.refused(name, r.status)
            log.info("leak_request_refused", receiver=name, status=r.status, why=r.message)
            return answer(r.status, r.message)

    return run


# -- GitHub secret_scanning_alert webhooks ----------------------------------------------------------------
def github_webhook(intake: Intake, secret: Secret, max_body: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await read_body(request, max_body)
        json_only(request)
        if not hmac_sha256_ok(secret, body, request.headers.get("X-Hub-Signature-256")):
            raise Refused(401, "X-Hub-Signature-256 does not match the body (leaks.github.webhook_secret)")
        payload = parse_json(body)
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if event == "ping":
            return answer(200, "pong")
        if event == "secret_scanning_alert_location":  # where, again: the alert itself carries what is used
            return answer(202, "secret_scanning_alert_location ignored (the secret_scanning_alert is used)")
        if event != "secret_scanning_alert":
            raise Refused(400, f"event {event[:60]!r} is not handled here (only secret_scanning_alert)")
        if not delivery or len(delivery) > 128:
            raise Refused(400, "X-GitHub-Delivery is missing")
        if not isinstance(payload, dict):
            raise Refused(400, "expected a JSON object")
        action = _str(payload, "action", "body", limit=64)
        alert = payload.get("alert")
        repo = payload.get("repository")
        if not isinstance(alert, dict) or not isinstance(repo, dict):
            raise Refused(400, "body.alert and body.repository: expected objects")
        number = alert.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise Refused(400, "body.alert.number: expected a positive integer")
        _str(repo, "full_name", "body.repository", limit=200)
        assert action is not None
        what = await intake.github_alert(delivery, action, payload)
        if what is None:
            raise Refused(409, f"delivery {delivery[:64]} was already received (replay refused)")
        return answer(202, what)

    return handle


# -- GitHub secret scanning partner format --------------------------------------------------------------
def github_partner(intake: Intake, keys: PublicKeys, max_body: int) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await read_body(request, max_body)
        json_only(request)
        identifier = request.headers.get("Github-Public-Key-Identifier", "")
        signature = request.headers.get("Github-Public-Key-Signature")
        if not identifier or len(identifier) > 200 or not signature:
            raise Refused(401, "Github-Public-Key-Identifier and Github-Public-Key-Signature are required")
        try:
            pem = await keys.get(identifier)
        except Exception as exc:  # GitHub's key endpoint unreachable: the sender retries later
            log.warning("partner_keys_unavailable", error=str(exc)[:200])
            return answer(503, "GitHub's public keys cannot be fetched now; retry later")
        if pem is None or not ecdsa_ok(pem, body, signature):
            raise Refused(401, "the signature does not verify with GitHub's key of that identifier")
        tokens = parse_json(body)
        if not isinstance(tokens, list) or not tokens or len(tokens) > MAX_ITEMS:
            raise Refused(400, f"expected a JSON array of 1 to {MAX_ITEMS} token objects")
        items: list[Incoming] = []
        types: list[str] = []
        for i, t in enumerate(tokens):
            if not isinstance(t, dict):
                raise Refused(400, f"[{i}]: expected an object with token, type, url, source")
            token = _str(t, "token", f"[{i}]")
            kind = _str(t, "type", f"[{i}]", limit=200)
            url = _str(t, "url", f"[{i}]", required=False)
            source = _str(t, "source", f"[{i}]", required=False, limit=64)
            assert token is not None and kind is not None
            secret = Secret(token)
            where = clean_location(" ".join(x for x in (url, f"({source})" if source else None) if x), [token])
            items.append(
                Incoming(
                    "github_partner",
                    where,
                    secret=secret,
                    secret_type=kind,
                    url=clean_location(url, [token]) if url else None,
                )
            )
            types.append(kind)
        matched = await intake.submit(items)
        # Feedback only for tokens that are keys keywatch manages: for any other, keywatch cannot tell.
        out = [
            {
                "token_hash": hashlib.sha256(item.secret.reveal().encode()).hexdigest(),
                "token_type": kind,
                "label": "true_positive",
            }
            for item, kind, key in zip(items, types, matched, strict=True)
            if key is not None and item.secret
        ]
        return web.json_response(out, status=200)

    return handle


# -- generic reports --------------------------------------------------------------------------------------
def generic(
    intake: Intake, token: Secret | None, key: Secret | None, max_body: int
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await read_body(request, max_body)
        json_only(request)
        by_token = token is not None and bearer_ok(token, request.headers.get("Authorization"))
        by_hmac = key is not None and hmac_sha256_ok(key, body, request.headers.get("X-Keywatch-Signature-256"))
        if not (by_token or by_hmac):
            raise Refused(401, "a bearer token (Authorization) or X-Keywatch-Signature-256 is required")
        data = parse_json(body)
        findings = data if isinstance(data, list) else [data]
        if not findings or len(findings) > MAX_ITEMS:
            raise Refused(400, f"expected a finding object or an array of 1 to {MAX_ITEMS}")
        items = [_finding(f, f"[{i}]" if isinstance(data, list) else "body") for i, f in enumerate(findings)]
        matched = await intake.submit(items)
        return answer(202, "recorded", received=len(items), matched=sum(1 for m in matched if m is not None))

    return handle


def _finding(f: Any, where: str) -> Incoming:
    if not isinstance(f, dict):
        raise Refused(400, f"{where}: expected an object with secret or fingerprint, and location")
    secret = _str(f, "secret", where, required=False, limit=1024)
    fingerprint = _str(f, "fingerprint", where, required=False, limit=80)
    if (secret is None) == (fingerprint is None):
        raise Refused(400, f"{where}: give exactly one of secret and fingerprint")
    location = _str(f, "location", where, limit=2000)
    scanner = _str(f, "scanner", where, required=False, limit=64)
    url = _str(f, "url", where, required=False)
    confidence = f.get("confidence", "exact")
    if confidence not in ("exact", "pattern"):
        raise Refused(400, f"{where}.confidence: exact or pattern")
    hidden = [secret] if secret else []
    return Incoming(
        "generic",
        clean_location(location, hidden),
        secret=Secret(secret) if secret else None,
        fingerprint=fingerprint,
        confidence=confidence,
        url=clean_location(url, hidden) if url else None,
        detail={"scanner": clean_location(scanner, hidden)} if scanner else {},
    )
