"""Anthropic under /anthropic: the zero-token probe (`GET /v1/models`), `POST /v1/messages` and the Admin API key
subset.

The key is read from `x-api-key` (SDK 1.x) or `Authorization: Bearer` (SDK 2.x); the API accepts both.

Bodies, error envelopes and headers follow the provider's documented API. Per-key knobs in SimKey.extra:
  quota_status (400 default: the observed "credit balance is too low"; 402: the documented billing_error;
  429: the monthly spend cap, with error.details.error_code "enforced_spend_limit_reached" and no
  retry-after), retry_after (s, rate_limited, default 1), admin (True: an admin key whatever
  its behaviour), key_id/name/key_status/workspace_id/created_at (the key's Admin API record, with the
  workspace in `scope` as current answers give it; legacy_record: a top-level workspace_id instead; key_status is
  active, inactive, archived or expired and is changed by POST /v1/organizations/api_keys/{id}).
A key whose key_status is not active answers 401 like a wrong key (UNCONFIRMED wording; the status code
is what an inactive key gets from any API that checks keys).
Management data: state.admin["anthropic"]["page_size"] caps list pages (to exercise pagination).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from keywatch.sim.common import (
    admit,
    bearer,
    header_secret,
    json_response,
    paged_list,
    request_id,
    retry_after,
    state_of,
)
from keywatch.sim.state import SimKey, SimState

PREFIX = "/anthropic"
PROVIDER = "anthropic"
CREATED_AT = "2025-01-15T10:00:00Z"
MODELS = (
    ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    ("claude-opus-4-1-20250805", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
)
CREDIT_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade "
    "or purchase credits."
)
SPEND_LIMIT_MESSAGE = (
    "You have reached your specified workspace API usage limits. You will regain access on "
    "2026-01-01 at 00:00 UTC."
)
KEY_STATUSES = ("active", "inactive", "archived", "expired")


def partial_key_hint(secret: str) -> str:
    """How the Admin API shows a key: `sk-ant-api03-R2D...igAA`."""
    return f"{secret[:16]}...{secret[-4:]}"


def secret_of(request: web.Request) -> str | None:
    """`x-api-key` (SDK 1.x, curl examples) or `Authorization: Bearer` (SDK 2.x)."""
    return header_secret(request, "x-api-key") or bearer(request)


def error(
    status: int, err_type: str, message: str, headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> web.Response:
    rid = request_id()
    all_headers = {"request-id": rid}
    if headers:
        all_headers.update(headers)
    err: dict[str, Any] = {"type": err_type, "message": message}
    if details is not None:
        err["details"] = details
    body = {"type": "error", "error": err, "request_id": rid}
    return json_response(body, status, all_headers)


def wrong_key() -> web.Response:
    return error(401, "authentication_error", "invalid x-api-key")


def _rfc3339(seconds_from_now: float) -> str:
    at = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def ratelimit_headers(key: SimKey, limited: bool = False) -> dict[str, str]:
    wait = float(key.extra.get("retry_after", 1))
    return {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0" if limited else "49",
        "anthropic-ratelimit-requests-reset": _rfc3339(wait if limited else 1),
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "0" if limited else "40000",
        "anthropic-ratelimit-tokens-reset": _rfc3339(wait if limited else 1),
    }


def behaviour_error(key: SimKey) -> web.Response | None:
    """What a non-healthy key gets from any endpoint; None when the endpoint answers normally."""
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated"):
        return wrong_key()
    if key.extra.get("key_status", "active") != "active":
        return wrong_key()
    if b in ("forbidden", "missing_scope"):
        return error(
            403, "permission_error", "Your API key does not have permission to use the specified resource."
        )
    if b in ("quota_exhausted", "billing_not_active"):
        status = int(key.extra.get("quota_status", 400))
        if status == 402:
            return error(
                402, "billing_error", "Your credit balance is too low to continue. Add credits to proceed."
            )
        if status == 429:  # no retry-after: waiting until the next month is not a retry
            return error(429, "rate_limit_error", SPEND_LIMIT_MESSAGE,
                         details={"error_code": "enforced_spend_limit_reached"})
        return error(400, "invalid_request_error", CREDIT_MESSAGE)
    if b == "rate_limited":
        wait = float(key.extra.get("retry_after", 1))
        headers = ratelimit_headers(key, limited=True)
        headers["retry-after"] = retry_after(wait)
        return error(
            429,
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. "
            "For details, refer to: https://docs.claude.com/en/api/rate-limits.",
            headers,
        )
    if b == "server_error":
        return error(500, "api_error", "Internal server error")
    if b == "overloaded":
        return error(529, "overloaded_error", "Overloaded")
    return None


def missing_version(request: web.Request) -> web.Response | None:
    if request.headers.get("anthropic-version"):
        return None
    return error(400, "invalid_request_error", "anthropic-version: header is required")


async def list_models(request: web.Request) -> web.Response:
    key = await admit(request, PROVIDER, secret_of(request))
    if missing_version(request) is not None:
        return missing_version(request)
    if key is None or key.behaviour == "admin" or key.extra.get("admin"):
        return wrong_key()  # admin keys manage the organization; they cannot call models
    refused = behaviour_error(key)
    if refused is not None:
        return refused
    headers = {"request-id": request_id(), **ratelimit_headers(key)}
    if key.behaviour == "bad_body":
        return json_response({"status": "ok", "result": None}, 200, headers)
    data = [model_object(i, n, c) for i, n, c in MODELS]
    page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    return json_response(page, 200, headers)


def model_object(model_id: str, name: str, created_at: str) -> dict[str, Any]:
    """A model as the current API lists it (`lifecycle` is required by SDK 2.x's ModelInfo)."""
    return {"type": "model", "id": model_id, "display_name": name, "created_at": created_at,
            "lifecycle": "active", "deprecated_at": None, "retires_at": None}


async def create_message(request: web.Request) -> web.Response:
    """A billable call: the one place out-of-credit shows (the models list still answers 200 for it)."""
    key = await admit(request, PROVIDER, secret_of(request))
    if missing_version(request) is not None:
        return missing_version(request)
    if key is None or key.behaviour == "admin" or key.extra.get("admin"):
        return wrong_key()
    refused = behaviour_error(key)
    if refused is not None:
        return refused
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return error(400, "invalid_request_error", "The request body is not valid JSON.")
    for field in ("model", "max_tokens", "messages"):
        if field not in payload:
            return error(400, "invalid_request_error", f"{field}: Field required")
    if not isinstance(payload["max_tokens"], int) or payload["max_tokens"] < 1:
        return error(400, "invalid_request_error", "max_tokens: Input should be greater than or equal to 1")
    headers = {"request-id": request_id(), **ratelimit_headers(key)}
    body = {
        "id": f"msg_{headers['request-id'][4:28]}",
        "type": "message",
        "role": "assistant",
        "model": str(payload["model"]),
        "content": [{"type": "text", "text": "pong"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 8, "output_tokens": 1, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0, "service_tier": "standard"},
    }
    return json_response(body, 200, headers)


# --- Admin API ---------------------------------------------------------------------------------------------


async def _admin(request: web.Request) -> web.Response | None:
    key = await admit(request, PROVIDER, secret_of(request))
    if missing_version(request) is not None:
        return missing_version(request)
    if key is None:
        return wrong_key()
    is_admin = key.behaviour == "admin" or bool(key.extra.get("admin"))
    if key.behaviour != "admin":
        refused = behaviour_error(key)
        if refused is not None:
            return refused
    if not is_admin:
        return error(401, "authentication_error", "invalid x-api-key: the Admin API needs an admin key")
    return None


def managed(state: SimState) -> list[SimKey]:
    return [k for k in state.keys.values() if k.provider == PROVIDER and "key_id" in k.extra]


def key_object(key: SimKey) -> dict[str, Any]:
    """The current record (`scope`, no top-level `workspace_id`); extra["legacy_record"] gives the older one."""
    extra = key.extra
    record = {
        "type": "api_key",
        "id": extra["key_id"],
        "created_at": extra.get("created_at", CREATED_AT),
        "created_by": {"id": "user_sim", "type": "user"},
        "expires_at": extra.get("expires_at"),
        "name": extra.get("name", extra["key_id"]),
        "partial_key_hint": partial_key_hint(key.secret),
        "status": extra.get("key_status", "active"),
        "scope": scope_of(extra.get("workspace_id")),
    }
    if extra.get("legacy_record"):
        del record["scope"]
        record["workspace_id"] = extra.get("workspace_id")
    return record


def scope_of(workspace_id: str | None) -> dict[str, Any]:
    """Where the key belongs, as current answers say it (SDK 2.x requires `scope`)."""
    if workspace_id is None:
        return {"type": "organization"}
    return {"type": "workspace", "workspace_id": workspace_id}


def _find(state: SimState, key_id: str) -> SimKey | None:
    return next((k for k in managed(state) if k.extra["key_id"] == key_id), None)


def _not_found(key_id: str) -> web.Response:
    return error(404, "not_found_error", f"API key {key_id} not found")


async def list_api_keys(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    state = state_of(request)
    cap = int(state.provider_data(PROVIDER).get("page_size", 1000))
    try:
        limit = max(1, min(cap, int(request.query.get("limit", 20))))
    except ValueError:
        return error(400, "invalid_request_error", "limit: Input should be a valid integer")
    items = [key_object(k) for k in managed(state)]
    wanted = request.query.get("status")
    if wanted:
        items = [i for i in items if i["status"] == wanted]
    workspace = request.query.get("workspace_id")
    if workspace:
        items = [i for i in items if i.get("scope", {}).get("workspace_id", i.get("workspace_id")) == workspace]
    page = paged_list(items, request.query.get("after_id"), limit)
    page.pop("object", None)
    return json_response(page, 200, {"request-id": request_id()})


async def get_api_key(request: web.Request) -> web.Response:
    refused = await _admin(request)
    if refused is not None:
        return refused
    key_id = request.match_info["key_id"]
    found = _find(state_of(request), key_id)
    if found is None:
        return _not_found(key_id)
    return json_response(key_object(found), 200, {"request-id": request_id()})


async def update_api_key(request: web.Request) -> web.Response:
    """`status` active|inactive|archived and `name`; an archived key cannot change again."""
    refused = await _admin(request)
    if refused is not None:
        return refused
    key_id = request.match_info["key_id"]
    found = _find(state_of(request), key_id)
    if found is None:
        return _not_found(key_id)
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return error(400, "invalid_request_error", "The request body must be a JSON object")
    status = payload.get("status")
    if status is not None and status not in ("active", "inactive", "archived"):
        return error(
            400, "invalid_request_error", "status: Input should be 'active', 'inactive' or 'archived'"
        )
    current = found.extra.get("key_status", "active")
    if current in ("archived", "expired") and status is not None and status != current:
        return error(400, "invalid_request_error", f"Cannot update an API key with status '{current}'")
    if status is not None:
        found.extra["key_status"] = status
    if isinstance(payload.get("name"), str):
        found.extra["name"] = payload["name"]
    return json_response(key_object(found), 200, {"request-id": request_id()})


def register(app: web.Application, state: SimState) -> None:
    v1 = f"{PREFIX}/v1"
    app.router.add_get(f"{v1}/models", list_models)
    app.router.add_post(f"{v1}/messages", create_message)
    app.router.add_get(f"{v1}/organizations/api_keys", list_api_keys)
    app.router.add_get(f"{v1}/organizations/api_keys/{{key_id}}", get_api_key)
    app.router.add_post(f"{v1}/organizations/api_keys/{{key_id}}", update_api_key)
