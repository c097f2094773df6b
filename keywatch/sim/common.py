"""Helpers every provider route module shares, so a new provider is mostly its own bodies and headers.

A handler typically does:

    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)   # counts, sleeps, hangs or drops as the key says
    if key is None: return <the provider's wrong-key answer>
    ... answer by key.behaviour ...
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from keywatch.sim.state import SimKey, SimState

STATE_KEY: web.AppKey[SimState] = web.AppKey("keywatch_sim_state", SimState)
DEFAULT_SLOW_DELAY_S = 30.0

_request_ids = itertools.count(1)


def state_of(request: web.Request) -> SimState:
    return request.app[STATE_KEY]


def bearer(request: web.Request) -> str | None:
    """The secret of an `Authorization: Bearer ...` header (OpenAI and most OpenAI-compatible APIs)."""
    auth = request.headers.get("Authorization")
    if auth is None or auth[:7].lower() != "bearer ":
        return None
    return auth[7:].strip() or None


def header_secret(request: web.Request, name: str) -> str | None:
    """The secret of a plain header such as Anthropic's `x-api-key`."""
    value = request.headers.get(name, "").strip()
    return value or None


async def admit(request: web.Request, provider: str, secret: str | None) -> SimKey | None:
    """Count the request and play the transport-level part of the key's behaviour.

    Returns the key (None for a missing or unknown secret, which the caller answers as the provider
    answers a wrong key). Latency applies to unknown secrets too: the real API is not faster for them.
    `hang` never returns (the handler is cancelled when the client disconnects), `slow` sleeps
    extra["delay_s"], `disconnect` drops the connection and never returns either.
    """
    state = request.app[STATE_KEY]
    key = state.keys.get(secret) if secret is not None else None
    resource = request.match_info.route.resource
    state.count(provider, resource.canonical if resource is not None else request.path, secret, time.time())
    latency = state.latency_for(key)
    if latency > 0:
        await asyncio.sleep(latency / 1000.0)
    if key is not None:
        behaviour = key.behaviour
        if behaviour == "hang":
            await asyncio.Event().wait()
        elif behaviour == "slow":
            await asyncio.sleep(float(key.extra.get("delay_s", DEFAULT_SLOW_DELAY_S)))
        elif behaviour == "disconnect":
            drop(request)
    return key


def drop(request: web.Request) -> None:
    """Close the connection without a status line; raising lets aiohttp give up quietly on the dead socket."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    raise web.HTTPInternalServerError()


def request_id() -> str:
    return f"req_{next(_request_ids):032x}"


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """`body` may be pre-encoded bytes, which keeps the hot path free of json.dumps for fixed answers."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return web.Response(body=data, status=status, headers=headers, content_type="application/json")


def go_duration(seconds: float) -> str:
    """Format like Go's time.Duration.String(): "12ms", "1s", "6m0s", "1h2m3.5s" (OpenAI's reset headers)."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{_trim(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h{int(minutes)}m{_trim(secs)}s"
    if minutes:
        return f"{int(minutes)}m{_trim(secs)}s"
    return f"{_trim(secs)}s"


def _trim(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def paged_list(
    items: Iterable[dict[str, Any]],
    after: str | None,
    limit: int,
    id_of: Callable[[dict[str, Any]], str] | None = None,
) -> dict[str, Any]:
    """The `{"object":"list","data","first_id","last_id","has_more"}` page cursor-paged lists share."""
    get_id = id_of or (lambda item: item["id"])
    rows = list(items)
    start = 0
    if after:
        ids = [get_id(item) for item in rows]
        start = ids.index(after) + 1 if after in ids else len(rows)
    data = rows[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": get_id(data[0]) if data else None,
        "last_id": get_id(data[-1]) if data else None,
        "has_more": start + limit < len(rows),
    }


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    return max(low, min(high, value))
