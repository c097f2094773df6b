"""The `/_sim/` control API: tests and benchmarks change keys and latency while the server runs."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from keywatch.domain import mask
from keywatch.sim.common import json_response, state_of
from keywatch.sim.state import SimKey, SimState

PREFIX = "/_sim"


def key_from_json(item: Any) -> SimKey:
    """Refuse a bad entry with a message naming the field, never the secret."""
    if not isinstance(item, dict):
        raise ValueError("each key must be a JSON object")
    secret = item.get("secret")
    if not isinstance(secret, str) or not secret:
        raise ValueError("'secret' must be a non-empty string")
    provider = item.get("provider", "openai")
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"key {mask(secret)}: 'provider' must be a non-empty string")
    latency = item.get("latency_ms")
    if latency is not None and not isinstance(latency, int | float):
        raise ValueError(f"key {mask(secret)}: 'latency_ms' must be a number or null")
    extra = item.get("extra") or {}
    if not isinstance(extra, dict):
        raise ValueError(f"key {mask(secret)}: 'extra' must be an object")
    return SimKey(
        secret=secret,
        provider=provider,
        behaviour=item.get("behaviour", "healthy"),
        latency_ms=float(latency) if latency is not None else None,
        extra=extra,
    )


def _bad_request(message: str) -> web.Response:
    return json_response({"error": message}, status=400)


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body must be JSON"}), content_type="application/json"
        ) from None


async def post_keys(request: web.Request) -> web.Response:
    payload = await _read_json(request)
    items = payload if isinstance(payload, list) else [payload]
    try:
        keys = [key_from_json(item) for item in items]
    except ValueError as exc:
        return _bad_request(str(exc))
    state = state_of(request)
    for key in keys:
        state.upsert(key)
    return json_response({"upserted": len(keys), "keys": [key.describe() for key in keys]})


async def list_keys(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_response(
        {"keys": [{**key.describe(), "last_used_at": state.last_used.get(key.secret)} for key in state.keys.values()]}
    )


async def delete_keys(request: web.Request) -> web.Response:
    state = state_of(request)
    removed = len(state.keys)
    state.reset()
    return json_response({"removed": removed})


async def post_latency(request: web.Request) -> web.Response:
    payload = await _read_json(request)
    latency = payload.get("latency_ms") if isinstance(payload, dict) else None
    if not isinstance(latency, int | float) or latency < 0:
        return _bad_request("'latency_ms' must be a number >= 0")
    state_of(request).default_latency_ms = float(latency)
    return json_response({"latency_ms": float(latency)})


async def post_propagation(request: web.Request) -> web.Response:
    payload = await _read_json(request)
    delay = payload.get("delay_s") if isinstance(payload, dict) else None
    if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
        return _bad_request("'delay_s' must be a number >= 0")
    state_of(request).propagation_delay_s = float(delay)
    return json_response({"delay_s": float(delay)})


async def get_propagation(request: web.Request) -> web.Response:
    return json_response({"delay_s": state_of(request).propagation_delay_s})


async def get_stats(request: web.Request) -> web.Response:
    return json_response(state_of(request).stats())


async def delete_stats(request: web.Request) -> web.Response:
    state_of(request).reset_stats()
    return json_response({"reset": True})


async def get_health(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_response({"status": "ok", "keys": len(state.keys), "latency_ms": state.default_latency_ms})


def register(app: web.Application, state: SimState) -> None:
    app.router.add_post(f"{PREFIX}/keys", post_keys)
    app.router.add_get(f"{PREFIX}/keys", list_keys)
    app.router.add_delete(f"{PREFIX}/keys", delete_keys)
    app.router.add_post(f"{PREFIX}/latency", post_latency)
    app.router.add_post(f"{PREFIX}/propagation", post_propagation)
    app.router.add_get(f"{PREFIX}/propagation", get_propagation)
    app.router.add_get(f"{PREFIX}/stats", get_stats)
    app.router.add_delete(f"{PREFIX}/stats", delete_stats)
    app.router.add_get(f"{PREFIX}/health", get_health)
