"""GitHub under /github: the secret scanning alert (REST, with its `secret`), the partner program's public
keys, and what a test needs to send GitHub's deliveries: a signed `secret_scanning_alert` webhook and a
signed partner report (the simulator holds the private key its public-keys endpoint publishes).

Management data: state.admin["github"]: `token` (the token the alert endpoint wants; None: any), `alerts`
({"owner/repo#number": alert object}), the partner signing key (made at first use).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from typing import Any

from aiohttp import web

from keywatch.sim.common import json_response, state_of
from keywatch.sim.state import SimState

PREFIX = "/github"
PROVIDER = "github"
KEY_IDENTIFIER = "kw-sim-" + "0" * 57


def data(state: SimState) -> dict[str, Any]:
    return state.provider_data(PROVIDER)


def plant_alert(
    state: SimState,
    repo: str,
    number: int,
    secret: str,
    *,
    secret_type: str = "openai_api_key",  # noqa: S107 (a GitHub secret type name)
    path: str = "config/settings.py",
    line: int = 12,
    validity: str = "active",
    publicly_leaked: bool = False,
) -> dict[str, Any]:
    """An alert GitHub holds for `repo`; returns the webhook payload announcing it (action `created`)."""
    html = f"https://github.com/{repo}/security/secret-scanning/{number}"
    alert = {
        "number": number,
        "created_at": "2026-01-05T10:00:00Z",
        "updated_at": "2026-01-05T10:00:00Z",
        "url": f"https://api.github.com/repos/{repo}/secret-scanning/alerts/{number}",
        "html_url": html,
        "locations_url": f"https://api.github.com/repos/{repo}/secret-scanning/alerts/{number}/locations",
        "state": "open",
        "resolution": None,
        "resolved_at": None,
        "secret_type": secret_type,
        "secret_type_display_name": secret_type.replace("_", " "),
        "validity": validity,
        "publicly_leaked": publicly_leaked,
        "multi_repo": False,
        "first_location_detected": {
            "path": path,
            "start_line": line,
            "end_line": line,
            "commit_sha": hashlib.sha256(f"{repo}{number}".encode()).hexdigest()[:40],
        },
    }
    data(state).setdefault("alerts", {})[f"{repo}#{number}"] = {**alert, "secret": secret}
    return {
        "action": "created",
        "alert": alert,
        "repository": {"full_name": repo, "name": repo.split("/")[-1]},
        "sender": {"login": "github"},
    }


def webhook(
    secret: str, payload: Any, *, event: str = "secret_scanning_alert", delivery: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a GitHub webhook delivery, signed with the webhook's `secret`."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    sig = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sig,
        "User-Agent": "GitHub-Hookshot/sim",
    }


def _private_key(state: SimState) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    d = data(state)
    if "partner_key" not in d:
        d["partner_key"] = ec.generate_private_key(ec.SECP256R1())
    return d["partner_key"]


def public_key_pem(state: SimState) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        _private_key(state)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def partner_report(state: SimState, tokens: list[dict[str, str]] | bytes) -> tuple[bytes, dict[str, str]]:
    """The body and headers GitHub sends a partner endpoint, signed with the simulator's key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    body = tokens if isinstance(tokens, bytes) else json.dumps(tokens).encode()
    sig = _private_key(state).sign(body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "Content-Type": "application/json",
        "Github-Public-Key-Identifier": KEY_IDENTIFIER,
        "Github-Public-Key-Signature": base64.b64encode(sig).decode(),
    }


def _message(status: int, message: str) -> web.Response:
    return json_response(
        {"message": message, "documentation_url": "https://docs.github.com/rest", "status": str(status)}, status
    )


async def get_alert(request: web.Request) -> web.Response:
    state = state_of(request)
    d = data(state)
    state.count(PROVIDER, "secret_scanning_alert", None, 0.0, used=False)
    want = d.get("token")
    auth = request.headers.get("Authorization", "")
    if want is not None and auth != f"Bearer {want}":
        return _message(401, "Bad credentials")
    m = request.match_info
    alert = d.get("alerts", {}).get(f"{m['owner']}/{m['repo']}#{m['number']}")
    if alert is None:
        return _message(404, "Not Found")
    return json_response(alert)


async def get_public_keys(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_response(
        {"public_keys": [{"key_identifier": KEY_IDENTIFIER, "key": public_key_pem(state), "is_current": True}]}
    )


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(f"{PREFIX}/repos/{{owner}}/{{repo}}/secret-scanning/alerts/{{number}}", get_alert)
    app.router.add_get(f"{PREFIX}/meta/public_keys/secret_scanning", get_public_keys)
