"""OpenRouter under /openrouter/api/v1: `GET /key` (probe plus per-key spend) and the management-key API.

Bodies and errors follow the provider's documented API.
Per-key knobs in SimKey.extra: limit (USD or None), usage (USD, default 0.25), limit_reset,
quota_status (None default: quota_exhausted shows as limit_remaining 0 on a 200; 402: "Insufficient
credits"), retry_after (s, rate_limited), admin (True: a management key whatever its behaviour),
hash/name/disabled/created_at (the key's record in GET /keys; disabled is changed by PATCH /keys/{hash}).
A disabled key answers 401 "User not found." like a wrong key (UNCONFIRMED wording for disabled keys).
Management data: state.admin["openrouter"]["page_size"] (default 100) caps GET /keys pages.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from keywatch.sim.common import admit, bearer, json_response, retry_after, state_of
from keywatch.sim.state import SimKey, SimState

PREFIX = "/openrouter"
PROVIDER = "openrouter"
CREATED_AT = "2025-03-01T12:00:00.000Z"


def error(status: int, message: str, headers: dict[str, str] | None = None, **metadata: Any) -> web.Response:
    err: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        err["metadata"] = metadata
    return json_response({"error": err}, status, headers)


def wrong_key() -> web.Response:
    return error(401, "User not found.")


def label(secret: str) -> str:
    """How OpenRouter shows a key: `sk-or-v1-0e6...1c96`."""
    return f"{secret[:12]}...{secret[-4:]}"


def is_management(key: SimKey) -> bool:
    return key.behaviour == "admin" or bool(key.extra.get("admin"))


def _figures(key: SimKey) -> dict[str, Any]:
    extra = key.extra
    limit = extra.get("limit")
    usage = extra.get("usage", 0.25)
    if key.behaviour == "quota_exhausted" and extra.get("quota_status") is None:
        limit = limit if limit is not None else 10
        usage = limit
    remaining = None if limit is None else float(max(Decimal(str(limit)) - Decimal(str(usage)), Decimal(0)))
    return {
        "limit": limit,
        "limit_remaining": remaining,
        "limit_reset": extra.get("limit_reset"),
        "usage": usage,
        "usage_daily": usage,
        "usage_weekly": usage,
        "usage_monthly": usage,
    }


def behaviour_error(key: SimKey) -> web.Response | None:
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated") or key.extra.get("disabled"):
        return wrong_key()
    if b in ("forbidden", "missing_scope"):
        return error(403, "Forbidden: this key may not access this resource")
    if b in ("quota_exhausted", "billing_not_active") and key.extra.get("quota_status") == 402:
        return error(402, "Insufficient credits. Add more using https://openrouter.ai/settings/credits")
    if b == "rate_limited":
        wait = float(key.extra.get("retry_after", 1))
        return error(429, "Rate limit exceeded", {"retry-after": retry_after(wait)})
    if b == "server_error":
        return error(500, "Internal Server Error")
    if b == "overloaded":
        return error(503, "Service temporarily unavailable")
    return None


async def get_key(request: web.Request) -> web.Response:
    key = await admit(request, PROVIDER, bearer(request))
    if key is None:
        return wrong_key()
    refused = behaviour_error(key)
    if refused is not None:
        return refused
    if key.behaviour == "bad_body":
        return json_response({"status": "ok", "result": None})
    data = {
        "label": label(key.secret),
        **_figures(key),
        "is_free_tier": False,
        "is_management_key": is_management(key),
        "is_provisioning_key": is_management(key),
        "expires_at": None,
        "rate_limit": {"requests": -1, "interval": "10s"},
    }
    return json_response({"data": data})


# --- management keys ---------------------------------------------------------------------------------------


async def _management(request: web.Request) -> web.Response | None:
    key = await admit(request, PROVIDER, bearer(request))
    if key is None:
        return wrong_key()
    if key.behaviour != "admin":
        refused = behaviour_error(key)
        if refused is not None:
            return refused
    if not is_management(key):
        return error(403, "Only management keys can perform this operation")
    return None


def managed(state: SimState) -> list[SimKey]:
    return [k for k in state.keys.values() if k.provider == PROVIDER and "hash" in k.extra]


def record(key: SimKey) -> dict[str, Any]:
    extra = key.extra
    figures = _figures(key)
    return {
        "hash": extra["hash"],
        "name": extra.get("name", extra["hash"]),
        "label": label(key.secret),
        "disabled": bool(extra.get("disabled", False)),
        "limit": figures["limit"],
        "limit_remaining": figures["limit_remaining"],
        "limit_reset": figures["limit_reset"],
        "include_byok_in_limit": False,
        "usage": figures["usage"],
        "usage_daily": figures["usage_daily"],
        "usage_weekly": figures["usage_weekly"],
        "usage_monthly": figures["usage_monthly"],
        "created_at": extra.get("created_at", CREATED_AT),
        "updated_at": extra.get("updated_at"),
    }


def _find(state: SimState, key_hash: str) -> SimKey | None:
    return next((k for k in managed(state) if k.extra["hash"] == key_hash), None)


def _not_found() -> web.Response:
    return error(404, "Key not found")


async def _payload(request: web.Request) -> dict[str, Any] | None:
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


async def list_keys(request: web.Request) -> web.Response:
    refused = await _management(request)
    if refused is not None:
        return refused
    state = state_of(request)
    page_size = int(state.provider_data(PROVIDER).get("page_size", 100))
    try:
        offset = max(0, int(request.query.get("offset", 0)))
    except ValueError:
        return error(400, "offset must be an integer")
    include_disabled = request.query.get("include_disabled", "false").lower() == "true"
    items = [record(k) for k in managed(state) if include_disabled or not k.extra.get("disabled")]
    return json_response({"data": items[offset : offset + page_size]})


async def create_key(request: web.Request) -> web.Response:
    refused = await _management(request)
    if refused is not None:
        return refused
    payload = await _payload(request)
    if payload is None or not isinstance(payload.get("name"), str) or not payload["name"]:
        return error(400, "name is required")
    secret = "sk-or-v1-" + pysecrets.token_hex(32)
    key_hash = pysecrets.token_hex(32)
    key = SimKey(
        secret,
        PROVIDER,
        "healthy",
        None,
        {
            "hash": key_hash,
            "name": payload["name"],
            "limit": payload.get("limit"),
            "limit_reset": payload.get("limit_reset"),
            "usage": 0,
            "created_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        },
    )
    state_of(request).created(key)
    return json_response({"data": record(key), "key": secret}, 201)


async def get_managed_key(request: web.Request) -> web.Response:
    refused = await _management(request)
    if refused is not None:
        return refused
    found = _find(state_of(request), request.match_info["hash"])
    if found is None:
        return _not_found()
    return json_response({"data": record(found)})


async def patch_key(request: web.Request) -> web.Response:
    refused = await _management(request)
    if refused is not None:
        return refused
    found = _find(state_of(request), request.match_info["hash"])
    if found is None:
        return _not_found()
    payload = await _payload(request)
    if payload is None:
        return error(400, "The request body must be a JSON object")
    if "disabled" in payload:
        if not isinstance(payload["disabled"], bool):
            return error(400, "disabled must be a boolean")
        found.extra["disabled"] = payload["disabled"]
        if payload["disabled"]:  # how many times it was asked (tests count a containment's calls)
            found.extra["disable_calls"] = found.extra.get("disable_calls", 0) + 1
    for field in ("name", "limit", "limit_reset"):
        if field in payload:
            found.extra[field] = payload[field]
    found.extra["updated_at"] = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json_response({"data": record(found)})


async def delete_key(request: web.Request) -> web.Response:
    """Deleting forgets the secret, so it then answers 401 like any wrong key."""
    refused = await _management(request)
    if refused is not None:
        return refused
    state = state_of(request)
    found = _find(state, request.match_info["hash"])
    if found is None:
        return _not_found()
    del state.keys[found.secret]
    return json_response({"data": {"success": True}})


def register(app: web.Application, state: SimState) -> None:
    v1 = f"{PREFIX}/api/v1"
    app.router.add_get(f"{v1}/key", get_key)
    app.router.add_get(f"{v1}/auth/key", get_key)
    app.router.add_get(f"{v1}/keys", list_keys)
    app.router.add_post(f"{v1}/keys", create_key)
    app.router.add_get(f"{v1}/keys/{{hash}}", get_managed_key)
    app.router.add_patch(f"{v1}/keys/{{hash}}", patch_key)
    app.router.add_delete(f"{v1}/keys/{{hash}}", delete_key)
