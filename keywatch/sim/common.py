"""Helpers every provider route module shares, so a new provider is mostly its own bodies and headers.

A handler typically does:

    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)   # counts, sleeps, hangs or drops as the key says
    if key is None: return <the provider's wrong-key answer>
    ... answer by key.behaviour ...
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from keywatch.sim.state import HOSTILE, SimKey, SimState

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

    Returns the key (None for a missing or unknown secret, or a new credential whose propagation delay has not
    passed, which the caller answers as the provider answers a wrong key). Latency applies to unknown secrets
    too: the real API is not faster for them. `hang` never returns (the handler is cancelled when the client
    disconnects), `slow` sleeps extra["delay_s"], `disconnect` drops the connection and never returns either. A
    hostile behaviour (`HOSTILE`) raises `HostileAnswer`, which `hostile_answers` turns into that answer, on
    every route.
    """
    state = request.app[STATE_KEY]
    key = state.keys.get(secret) if secret is not None else None
    resource = request.match_info.route.resource
    now = time.time()
    if key is not None and not key.propagated(now):
        key = None  # created, not yet propagated: the provider does not know it yet
    route = resource.canonical if resource is not None else request.path
    state.count(provider, route, secret, now, used=key is not None)
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
        elif behaviour in HOSTILE:
            raise HostileAnswer(behaviour)
    return key


# -- hostile answers: what something posing as a provider can send -------------------------------------------

HUGE_BYTES = 200 * 2**20  # `huge`: a 200 MiB model list
BOMB_BYTES = 2**30  # `gzip_bomb`: decodes to 1 GiB; about 1 MB on the wire
DEEP_NESTING = 100_000  # `deep_json`: lists nested this deep (200 kB)
SLOWLORIS_EVERY_S = 1.0  # `slowloris`: one byte this often, forever
REDIRECT_HOST = "https://elsewhere.keywatch-sim.invalid"  # `redirect_away`: never resolves, never answers
_LIST_HEAD = b'{"object":"list","data":['
_ENTRY = b'{"id":"model-0000","object":"model","owned_by":"sim"},'
_CHUNK = _ENTRY * (64 * 1024 // len(_ENTRY))  # about 64 kB of list entries
_SPACES = b" " * 2**20


class HostileAnswer(Exception):
    """Raised by `admit` for a hostile key; the middleware answers it, whatever route it came from."""

    def __init__(self, behaviour: str) -> None:
        super().__init__(behaviour)
        self.behaviour = behaviour


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip stream (valid, CRC and length included) of a JSON model list padded with 1 GiB of spaces.

    Built from one full-flushed deflate block of 1 MiB of spaces repeated: a full flush resets the
    compressor, so every repetition compresses to the same bytes and the 1 GiB need never be compressed.
    """
    head, tail = _LIST_HEAD, b"]}"
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(_SPACES) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(tail) + c.flush(zlib.Z_FINISH)
    repeats = BOMB_BYTES // len(_SPACES)
    crc = zlib.crc32(head)
    for _ in range(repeats):
        crc = zlib.crc32(_SPACES, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + repeats * len(_SPACES) + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little")
    return b"".join([header, first, block * repeats, last, trailer])


async def _stream(
    request: web.Request, write: Callable[[web.StreamResponse], Awaitable[None]], *,
    headers: Mapping[str, str] | None = None, length: int | None = None,
) -> web.StreamResponse:
    """A 200 whose body `write` produces, as slowly or as long as it likes; ends when the client leaves."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        await write(response)
        await response.write_eof()
    except ConnectionError:  # the client stopped reading, as it should
        pass
    return response


async def hostile_answer(request: web.Request, behaviour: str) -> web.StreamResponse:
    if behaviour == "redirect_away":
        raise web.HTTPFound(location=REDIRECT_HOST + request.path)
    if behaviour == "deep_json":
        depth = DEEP_NESTING
        return json_response(b'{"object":"list","data":' + b"[" * depth + b"]" * depth + b"}")

    async def huge(r: web.StreamResponse) -> None:
        await r.write(_LIST_HEAD)
        for _ in range(HUGE_BYTES // len(_CHUNK)):
            await r.write(_CHUNK)
        await r.write(b'{"id":"last","object":"model"}]}')

    async def endless(r: web.StreamResponse) -> None:
        await r.write(_LIST_HEAD)
        while True:
            await r.write(_CHUNK)

    async def slowloris(r: web.StreamResponse) -> None:
        for byte in itertools.chain(_LIST_HEAD, itertools.repeat(ord(" "))):
            await r.write(bytes([byte]))
            await asyncio.sleep(SLOWLORIS_EVERY_S)

    async def bomb(r: web.StreamResponse) -> None:
        data = gzip_bomb()
        for at in range(0, len(data), 16 * 1024):
            await r.write(data[at : at + 16 * 1024])

    if behaviour == "gzip_bomb":
        data = await asyncio.to_thread(gzip_bomb)  # built once; a fraction of a second
        return await _stream(request, bomb, headers={"Content-Encoding": "gzip"}, length=len(data))
    writers = {"huge": huge, "endless": endless, "slowloris": slowloris}
    return await _stream(request, writers[behaviour])


@web.middleware
async def hostile_answers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except HostileAnswer as answer:
        return await hostile_answer(request, answer.behaviour)


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
