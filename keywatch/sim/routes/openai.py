"""OpenAI under /openai/v1: the zero-token and 1-token probes and the Admin API project-key subset.

Bodies, codes and headers follow the provider's documented API. Per-key knobs in SimKey.extra:
  retry_after (s, rate_limited, default 1), limit_requests/remaining_requests/reset_requests and
  limit_tokens/remaining_tokens/reset_tokens (x-ratelimit-* values; resets in seconds or Go strings),
  status (override the HTTP status of an error behaviour, e.g. 502 for server_error, 404 for model_not_found),
  error_type/error_code/error_message (override the error body), scope (missing_scope), organization,
  project_id/key_id/name/created_at/owner_type (Admin API project keys), admin (True: an admin key
  whatever its behaviour), models (ids listed by GET /models), bad_body ("html": an HTML page, else JSON).
"""

from __future__ import annotations

import json
import secrets as pysecrets
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from keywatch.sim.common import (
    admit,
    bearer,
    go_duration,
    json_response,
    paged_list,
    request_id,
    state_of,
)
from keywatch.sim.state import SimKey, SimState

PREFIX = "/openai"
PROVIDER = "openai"
ORGANIZATION = "org-sim"
DEFAULT_MODEL = "gpt-4o-mini"
CREATED_AT = 1719000000  # fixed so answers are reproducible

MODELS: tuple[tuple[str, int, str], ...] = (
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
)


def _models_body(ids: tuple[tuple[str, int, str], ...]) -> bytes:
    data = [{"id": i, "object": "model", "created": c, "owned_by": o} for i, c, o in ids]
    return json.dumps({"object": "list", "data": data}, separators=(",", ":")).encode()


MODELS_BODY = _models_body(MODELS)
RATE_LIMIT_DEFAULTS: dict[str, Any] = {
    "limit_requests": 60,
    "remaining_requests": 59,
    "reset_requests": "1s",
    "limit_tokens": 150000,
    "remaining_tokens": 149984,
    "reset_tokens": "6m0s",
}

# Behaviours every endpoint shows (authentication, throttling, outages) ...
ANY_ENDPOINT = frozenset(
    {"invalid", "deactivated", "account_deactivated", "missing_scope", "forbidden",
     "rate_limited", "server_error", "overloaded"}
)
# ... and those only a billable call can see: GET /models still answers 200 for them.
BILLABLE_ONLY = frozenset({"quota_exhausted", "model_not_found", "billing_not_active"})


def openai_mask(secret: str) -> str:
    """How OpenAI quotes a wrong key: `sk-proj-****GDYA` (prefix up to the last dash, last 4 characters)."""
    if len(secret) <= 12:
        return "****"
    dash = secret.rfind("-", 0, 16)
    prefix = secret[: dash + 1] if dash >= 2 else secret[:3]
    return f"{prefix}****{secret[-4:]}"


def redacted_value(secret: str) -> str:
    """How the Admin API lists a key: first 8 and last 4 characters."""
    return f"{secret[:8]}...{secret[-4:]}"


def _headers(key: SimKey | None, latency_ms: float) -> dict[str, str]:
    org = key.extra.get("organization", ORGANIZATION) if key is not None else ORGANIZATION
    return {
        "x-request-id": request_id(),
        "openai-organization": org,
        "openai-processing-ms": str(int(latency_ms)),
        "openai-version": "2020-10-01",
    }


def _reset(value: Any) -> str:
    return value if isinstance(value, str) else go_duration(float(value))


def _ratelimit_headers(key: SimKey, limited: bool = False) -> dict[str, str]:
    extra = key.extra
    values = dict(RATE_LIMIT_DEFAULTS)
    if limited:
        wait = float(extra.get("retry_after", 1))
        values["remaining_requests"] = 0
        values["reset_requests"] = go_duration(wait)
    for name in RATE_LIMIT_DEFAULTS:
        if name in extra:
            values[name] = extra[name]
    return {
        "x-ratelimit-limit-requests": str(values["limit_requests"]),
        "x-ratelimit-limit-tokens": str(values["limit_tokens"]),
        "x-ratelimit-remaining-requests": str(values["remaining_requests"]),
        "x-ratelimit-remaining-tokens": str(values["remaining_tokens"]),
        "x-ratelimit-reset-requests": _reset(values["reset_requests"]),
        "x-ratelimit-reset-tokens": _reset(values["reset_tokens"]),
    }


def _envelope(
    message: str, err_type: str | None, code: str | None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    err_type: str | None,
    code: str | None,
    key: SimKey | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> web.Response:
    """The documented envelope; a key's extra may override status, type, code or message."""
    if key is not None:
        extra = key.extra
        status = int(extra.get("status", status))
        err_type = extra.get("error_type", err_type)
        code = extra.get("error_code", code)
        message = extra.get("error_message", message)
    all_headers = _headers(key, 0)
    if headers:
        all_headers.update(headers)
    return json_response(_envelope(message, err_type, code, param), status, all_headers)


def wrong_key(secret: str | None, key: SimKey | None = None) -> web.Response:
    if secret is None:
        return error_response(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
            "username) if you're accessing the API from your browser and are prompted for a username. "
            "You can obtain an API key from https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            None,
        )
    return error_response(
        401,
        f"Incorrect API key provided: {openai_mask(secret)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
        key,
    )


def missing_scope(key: SimKey, scope: str) -> web.Response:
    scope = key.extra.get("scope", scope)
    return error_response(
        401,
        f"You have insufficient permissions for this operation. Missing scopes: {scope}. Check that you have "
        "the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), and if "
        "you're using a restricted API key, that it has the necessary scopes.",
        "invalid_request_error",
        "missing_scope",
        key,
    )


def behaviour_error(key: SimKey, model: str, scope: str) -> web.Response | None:
    """The answer a non-healthy key gets, or None when the endpoint answers it normally."""
    behaviour = key.behaviour
    if behaviour in ("invalid", "deactivated"):
        return wrong_key(key.secret, key)
    if behaviour == "account_deactivated":
        return error_response(
            401,
            "Your OpenAI account has been deactivated, please check your email for more information. "
            "If you feel this is an error, contact us through our help center at help.openai.com.",
            "invalid_request_error",
            "account_deactivated",
            key,
        )
    if behaviour == "missing_scope":
        return missing_scope(key, scope)
    if behaviour == "forbidden":
        return error_response(
            403, "Country, region, or territory not supported", "request_forbidden",
            "unsupported_country_region_territory", key,
        )
    if behaviour == "rate_limited":
        wait = float(key.extra.get("retry_after", 1))
        headers = _ratelimit_headers(key, limited=True)
        headers["retry-after"] = str(max(0, round(wait)))
        return error_response(
            429,
            f"Rate limit reached for {model} in organization {key.extra.get('organization', ORGANIZATION)} "
            f"on requests per min (RPM): Limit {headers['x-ratelimit-limit-requests']}, Used "
            f"{headers['x-ratelimit-limit-requests']}, Requested 1. Please try again in {go_duration(wait)}. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
            key,
            headers,
        )
    if behaviour == "server_error":
        return error_response(
            500, "The server had an error while processing your request. Sorry about that!",
            "server_error", None, key,
        )
    if behaviour == "overloaded":
        return error_response(
            503, "The engine is currently overloaded, please try again later.", "server_error", None, key,
        )
    if behaviour == "admin" or key.extra.get("admin"):
        return missing_scope(key, scope)  # admin keys manage the organization; they cannot call models
    return None


def billable_error(key: SimKey, model: str) -> web.Response | None:
    behaviour = key.behaviour
    if behaviour == "quota_exhausted":
        # No Retry-After: waiting does not help, a person has to add credit.
        return error_response(
            429,
            "You exceeded your current quota, please check your plan and billing details. For more "
            "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
            key,
        )
    if behaviour == "billing_not_active":
        return error_response(
            429, "Your account is not active, please check your billing details on our website.",
            "billing_not_active", "billing_not_active", key,
        )
    if behaviour == "model_not_found":
        project = key.extra.get("project_id", "proj_sim")
        return error_response(
            403, f"Project `{project}` does not have access to model `{model}`",
            "invalid_request_error", "model_not_found", key,
        )
    return None


def _bad_body(key: SimKey, latency_ms: float) -> web.Response:
    """200 but not the documented shape: what a misconfigured gateway or a captive portal returns.

    extra["bad_body"] = "html" sends an HTML page instead of JSON (the SDK then fails in its own way).
    """
    if key.extra.get("bad_body") == "html":
        return web.Response(
            text="<html><body><h1>Welcome to nginx!</h1></body></html>",
            content_type="text/html",
            headers=_headers(key, latency_ms),
        )
    return json_response({"status": "ok", "result": None}, 200, _headers(key, latency_ms))


async def list_models(request: web.Request) -> web.Response:
    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)
    if key is None:
        return wrong_key(secret)
    error = behaviour_error(key, DEFAULT_MODEL, "api.model.read")
    if error is not None:
        return error
    latency = state_of(request).latency_for(key)
    if key.behaviour == "bad_body":
        return _bad_body(key, latency)
    headers = _headers(key, latency)
    headers.update(_ratelimit_headers(key))
    models = key.extra.get("models")
    body = MODELS_BODY if models is None else _models_body(tuple((m, CREATED_AT, "system") for m in models))
    return json_response(body, 200, headers)


async def chat_completions(request: web.Request) -> web.Response:
    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)
    if key is None:
        return wrong_key(secret)
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        payload = None
    if not isinstance(payload, dict):
        return error_response(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
            "not valid JSON. If you have trouble figuring out how to fix this, please contact us through "
            "our help center at help.openai.com.)",
            "invalid_request_error",
            None,
        )
    model = str(payload.get("model") or DEFAULT_MODEL)
    error = behaviour_error(key, model, "model.request") or billable_error(key, model)
    if error is not None:
        return error
    latency = state_of(request).latency_for(key)
    if key.behaviour == "bad_body":
        return _bad_body(key, latency)
    headers = _headers(key, latency)
    headers.update(_ratelimit_headers(key))
    body = {
        "id": f"chatcmpl-{headers['x-request-id'][4:]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "pong", "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
        "service_tier": "default",
        "system_fingerprint": None,
    }
    return json_response(body, 200, headers)


# --- Admin API ---------------------------------------------------------------------------------------------


async def _admin(request: web.Request) -> tuple[SimKey | None, web.Response | None]:
    """An admin key passes; a project key is refused for its missing scope, as the real API does."""
    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)
    if key is None:
        return None, wrong_key(secret)
    is_admin = key.behaviour == "admin" or bool(key.extra.get("admin"))
    if key.behaviour != "admin":
        error = behaviour_error(key, DEFAULT_MODEL, "api.management.read")
        if error is not None:
            return None, error
    if not is_admin:
        return None, missing_scope(key, "api.management.read")
    return key, None


def _not_found(message: str) -> web.Response:
    return error_response(404, message, "invalid_request_error", None)


def _limit(request: web.Request, default: int = 20) -> int:
    try:
        value = int(request.query.get("limit", default))
    except ValueError:
        value = default
    return max(1, min(100, value))


def project_keys(state: SimState, project_id: str | None = None) -> Iterator[SimKey]:
    for key in state.keys.values():
        extra = key.extra
        if (
            key.provider == PROVIDER
            and "project_id" in extra
            and "key_id" in extra
            and (project_id is None or extra["project_id"] == project_id)
        ):
            yield key


def projects(state: SimState) -> dict[str, dict[str, Any]]:
    """Projects set in state.admin["openai"]["projects"] plus any a project key names."""
    declared: dict[str, dict[str, Any]] = state.provider_data(PROVIDER).get("projects", {})
    found: dict[str, dict[str, Any]] = {}
    for project_id, info in declared.items():
        found[project_id] = _project_item(project_id, info)
    for key in project_keys(state):
        project_id = key.extra["project_id"]
        if project_id not in found:
            found[project_id] = _project_item(project_id, {"name": key.extra.get("project_name", project_id)})
    return found


def _project_item(project_id: str, info: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": project_id,
        "object": "organization.project",
        "name": info.get("name", project_id),
        "created_at": info.get("created_at", CREATED_AT),
        "archived_at": info.get("archived_at"),
        "status": info.get("status", "active"),
    }


def _key_item(state: SimState, key: SimKey) -> dict[str, Any]:
    extra = key.extra
    created = extra.get("created_at", CREATED_AT)
    last_used = state.last_used.get(key.secret)
    if extra.get("owner_type") == "service_account":
        owner: dict[str, Any] = {
            "type": "service_account",
            "service_account": {
                "object": "organization.project.service_account",
                "id": _owner_id(key),
                "name": extra.get("owner_name", "sim-service-account"),
                "role": "member",
                "created_at": created,
            },
        }
    else:
        owner = {
            "type": "user",
            "user": {
                "object": "organization.user",
                "id": extra.get("owner_id", "user_sim"),
                "name": extra.get("owner_name", "Sim User"),
                "email": extra.get("owner_email", "sim@example.com"),
                "role": "owner",
                "added_at": CREATED_AT,
            },
        }
    return {
        "object": "organization.project.api_key",
        "redacted_value": redacted_value(key.secret),
        "name": extra.get("name", extra["key_id"]),
        "created_at": created,
        "last_used_at": int(last_used) if last_used is not None else None,
        "id": extra["key_id"],
        "owner": owner,
    }


def _find_key(state: SimState, project_id: str, key_id: str) -> SimKey | None:
    return next((k for k in project_keys(state, project_id) if k.extra["key_id"] == key_id), None)


async def _named_key(request: web.Request) -> tuple[SimKey | None, SimKey] | web.Response:
    """The admin key calling and the project key the path names, or the refusal or 404 to answer with."""
    key, refused = await _admin(request)
    if refused is not None:
        return refused
    project_id, key_id = request.match_info["project_id"], request.match_info["key_id"]
    found = _find_key(state_of(request), project_id, key_id)
    if found is None:
        return _not_found(f"No API key found with id '{key_id}' in project '{project_id}'.")
    return key, found


def _list_page(request: web.Request, key: SimKey | None, items: list[dict[str, Any]]) -> web.Response:
    """One page of a list endpoint, cursor (`after`) and `limit` taken from the query as the real API does."""
    return json_response(paged_list(items, request.query.get("after"), _limit(request)), 200, _headers(key, 0))


async def list_projects(request: web.Request) -> web.Response:
    key, refused = await _admin(request)
    if refused is not None:
        return refused
    include_archived = request.query.get("include_archived", "false").lower() == "true"
    items = [p for p in projects(state_of(request)).values() if include_archived or p["archived_at"] is None]
    return _list_page(request, key, items)


async def list_project_keys(request: web.Request) -> web.Response:
    key, refused = await _admin(request)
    if refused is not None:
        return refused
    state = state_of(request)
    project_id = request.match_info["project_id"]
    if project_id not in projects(state):
        return _not_found(f"No project found with id '{project_id}'.")
    return _list_page(request, key, [_key_item(state, k) for k in project_keys(state, project_id)])


async def get_project_key(request: web.Request) -> web.Response:
    named = await _named_key(request)
    if isinstance(named, web.Response):
        return named
    key, found = named
    return json_response(_key_item(state_of(request), found), 200, _headers(key, 0))


async def delete_project_key(request: web.Request) -> web.Response:
    """Deleting forgets the secret, so it then answers 401 invalid_api_key like any wrong key."""
    named = await _named_key(request)
    if isinstance(named, web.Response):
        return named
    key, found = named
    state, key_id = state_of(request), found.extra["key_id"]
    if found.extra.get("owner_type") == "service_account" and not any(
        k is not found and _owner_id(k) == _owner_id(found) for k in project_keys(state, found.extra["project_id"])
    ):
        return error_response(
            400,
            "Service account API keys cannot be deleted directly; delete the service account instead.",
            "invalid_request_error",
            None,
        )
    del state.keys[found.secret]
    state.provider_data(PROVIDER).setdefault("deleted_key_ids", []).append(key_id)
    body = {"object": "organization.project.api_key.deleted", "id": key_id, "deleted": True}
    return json_response(body, 200, _headers(key, 0))


# --- service accounts and their keys (rotation) ----------------------------------------------------------


def _owner_id(key: SimKey) -> str:
    extra = key.extra
    default = f"svc_acct_{extra['key_id']}" if extra.get("owner_type") == "service_account" else "user_sim"
    return str(extra.get("owner_id", default))


def _service_accounts(state: SimState) -> dict[str, dict[str, Any]]:
    return state.provider_data(PROVIDER).setdefault("service_accounts", {})


def _service_account(state: SimState, project_id: str, account_id: str) -> dict[str, Any] | None:
    """A service account declared (created through the API) or owning a key of the project."""
    declared = _service_accounts(state).get(account_id)
    if declared is not None:
        return declared if declared["project_id"] == project_id else None
    owner = next(
        (k for k in project_keys(state, project_id)
         if k.extra.get("owner_type") == "service_account" and _owner_id(k) == account_id),
        None,
    )
    if owner is None:
        return None
    return {"id": account_id, "project_id": project_id, "name": owner.extra.get("owner_name", "sim-service-account"),
            "created_at": owner.extra.get("created_at", CREATED_AT)}


def _new_service_account_key(
    state: SimState, project_id: str, account: dict[str, Any], name: str, expires_in: int | None
) -> dict[str, Any]:
    """A new key owned by `account`, known to the models routes after the propagation delay."""
    now = int(time.time())
    key_id = f"key_{pysecrets.token_hex(8)}"
    secret = f"sk-svcacct-{pysecrets.token_urlsafe(48)}"
    extra: dict[str, Any] = {
        "project_id": project_id, "key_id": key_id, "name": name, "created_at": now,
        "owner_type": "service_account", "owner_id": account["id"], "owner_name": account["name"],
    }
    state.created(SimKey(secret, PROVIDER, extra=extra))
    return {
        "id": key_id,
        "object": "organization.project.service_account.api_key",
        "name": name,
        "value": secret,
        "created_at": now,
        "expires_at": now + expires_in if expires_in else None,
    }


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    if not request.can_read_body:
        return {}
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def _expires(payload: dict[str, Any]) -> int | web.Response | None:
    value = payload.get("expires_in_seconds")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 31536000:
        return error_response(400, "expires_in_seconds must be an integer between 1 and 31536000",
                              "invalid_request_error", None, param="expires_in_seconds")
    return value


async def create_service_account(request: web.Request) -> web.Response:
    """`POST .../service_accounts` {"name"}: a service account and its first key (the value shown only here)."""
    key, refused = await _admin(request)
    if refused is not None:
        return refused
    state, project_id = state_of(request), request.match_info["project_id"]
    if project_id not in projects(state):
        return _not_found(f"No project found with id '{project_id}'.")
    payload = await _json_object(request)
    if payload is None or not isinstance(payload.get("name"), str) or not payload["name"]:
        return error_response(400, "name is required", "invalid_request_error", None, param="name")
    expires = _expires(payload)
    if isinstance(expires, web.Response):
        return expires
    now = int(time.time())
    account = {"id": f"svc_acct_{pysecrets.token_hex(8)}", "project_id": project_id, "name": payload["name"],
               "created_at": now}
    _service_accounts(state)[account["id"]] = account
    api_key = _new_service_account_key(state, project_id, account, "Secret Key", expires)
    body = {"object": "organization.project.service_account", "id": account["id"], "name": account["name"],
            "role": "member", "created_at": now, "api_key": api_key}
    return json_response(body, 200, _headers(key, 0))


async def create_service_account_key(request: web.Request) -> web.Response:
    """`POST .../service_accounts/{id}/api_keys` {"name"?, "scopes"?, "expires_in_seconds"?}: another key."""
    key, refused = await _admin(request)
    if refused is not None:
        return refused
    state = state_of(request)
    project_id, account_id = request.match_info["project_id"], request.match_info["service_account_id"]
    if project_id not in projects(state):
        return _not_found(f"No project found with id '{project_id}'.")
    account = _service_account(state, project_id, account_id)
    if account is None:
        return _not_found(f"No service account found with id '{account_id}' in project '{project_id}'.")
    payload = await _json_object(request)
    if payload is None:
        return error_response(400, "The request body must be a JSON object", "invalid_request_error", None)
    name = payload.get("name")
    if name is not None and not isinstance(name, str):
        return error_response(400, "name must be a string", "invalid_request_error", None, param="name")
    expires = _expires(payload)
    if isinstance(expires, web.Response):
        return expires
    body = _new_service_account_key(state, project_id, account, name or "Secret Key", expires)
    return json_response(body, 200, _headers(key, 0))


def register(app: web.Application, state: SimState) -> None:
    v1 = f"{PREFIX}/v1"
    app.router.add_get(f"{v1}/models", list_models)
    app.router.add_post(f"{v1}/chat/completions", chat_completions)
    app.router.add_get(f"{v1}/organization/projects", list_projects)
    keys = f"{v1}/organization/projects/{{project_id}}/api_keys"
    app.router.add_get(keys, list_project_keys)
    app.router.add_get(f"{keys}/{{key_id}}", get_project_key)
    app.router.add_delete(f"{keys}/{{key_id}}", delete_project_key)
    accounts = f"{v1}/organization/projects/{{project_id}}/service_accounts"
    app.router.add_post(accounts, create_service_account)
    app.router.add_post(f"{accounts}/{{service_account_id}}/api_keys", create_service_account_key)
