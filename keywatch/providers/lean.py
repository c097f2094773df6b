"""The lean probe path: a zero-token probe is one GET, made directly on the shared aiohttp session.

At thousands of keys a cycle the probe is CPU-bound, and most of that CPU is not keywatch's: an SDK builds
each request through its options, URL and header layers, then the httpx2 layer wraps aiohttp's answer in
its own. A zero-token probe needs none of it: one GET with the key's header, the status, a few headers and a
small body. `LeanHttp` makes exactly that GET on the aiohttp session the shared client already pools its
connections in (one pool, keep-alive), and reads the answer within the same limits `BoundedTransport`
enforces on the SDK path:

- at most `max_body` bytes, counted on the wire and after decoding (`gzip`, `deflate`, the only encodings
  asked for), a declared Content-Length above the cap refused unread: `BodyTooLarge`, `UndecodableBody`;
- at most `timeout` seconds from the start of the request to the last byte (`httpx2.ReadTimeout`);
- redirects never followed: a 3xx is handed up as it is, for the adapter to report.

Errors are raised as the httpx2 exceptions the adapters already classify (`classify_transport_error`), so
the classification tables are the same on both paths. The official SDKs stay in charge of everything else
(completion probes, admin and management calls, usage).

Timeouts use `Deadlines`: one repeating timer for every request in flight, not one timer per request.
Requests that share a timeout end in the order they started, so each timeout is a FIFO queue whose head is
the next to expire; a tick every `RESOLUTION` seconds cancels the expired ones.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import httpx2
from multidict import CIMultiDictProxy
from yarl import URL

from keywatch import __version__
from keywatch.providers.errors import BodyTooLarge, UndecodableBody
from keywatch.providers.transport import ACCEPT_ENCODING, MAX_BODY, _Inflate, _mib

RESOLUTION = 0.05  # seconds: how late a deadline may fire; a probe's timeout is whole seconds
URL_CACHE = 4096  # parsed URLs kept (keys share a handful of base URLs)
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None)
USER_AGENT = f"keywatch/{__version__}"

_PENDING, _DONE, _EXPIRED = 0, 1, 2


class _Limit:
    """One request's deadline; a context manager like `asyncio.timeout`, raising TimeoutError at expiry."""

    __slots__ = ("deadline", "state", "task")

    def __init__(self, deadline: float, task: asyncio.Task[Any]) -> None:
        self.deadline = deadline
        self.task = task
        self.state = _PENDING

    def __enter__(self) -> _Limit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self.state == _EXPIRED:
            self.task.uncancel()
            if exc_type is asyncio.CancelledError:
                raise TimeoutError from None
        self.state = _DONE


class Deadlines:
    """Deadlines for many concurrent operations on one event loop, checked by one repeating timer."""

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self.resolution = resolution
        self._queues: dict[float, deque[_Limit]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def limit(self, seconds: float) -> _Limit:
        """Use as `with deadlines.limit(10): await ...` inside a task."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (tests, a worker process): nothing of the old one applies
            self._loop, self._queues, self._handle = loop, {}, None
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.limit needs a running task")
        lim = _Limit(loop.time() + seconds, task)
        queue = self._queues.get(seconds)
        if queue is None:
            queue = self._queues[seconds] = deque()
        queue.append(lim)
        if self._handle is None:
            self._handle = loop.call_later(min(self.resolution, seconds), self._tick)
        return lim

    def _tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        for seconds in list(self._queues):
            queue = self._queues[seconds]
            while queue and (queue[0].state != _PENDING or queue[0].deadline <= now):
                lim = queue.popleft()
                if lim.state == _PENDING:
                    lim.state = _EXPIRED
                    lim.task.cancel()
            if not queue:
                del self._queues[seconds]
        self._handle = loop.call_later(self.resolution, self._tick) if self._queues else None

    def pending(self) -> int:
        return sum(1 for q in self._queues.values() for lim in q if lim.state == _PENDING)


class LeanResponse:
    """What a probe reads of an answer: the parts of `httpx2.Response` the adapters use, nothing more."""

    __slots__ = ("content", "headers", "reason_phrase", "status_code")

    def __init__(self, status_code: int, headers: CIMultiDictProxy[str], content: bytes, reason: str) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content
        self.reason_phrase = reason

    @property
    def is_redirect(self) -> bool:
        return 300 <= self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _decoder(headers: CIMultiDictProxy[str]) -> _Inflate | None:
    codings = [c.strip().lower() for v in headers.getall("Content-Encoding", ()) for c in v.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in ("gzip", "deflate"):
        raise UndecodableBody(f"content encoding {', '.join(codings)} was not asked for")
    return _Inflate(codings[0])


class LeanHttp:
    """One GET at a time on `session()`'s pool, within a body cap and a deadline (see the module doc)."""

    def __init__(
        self, session: Callable[[], aiohttp.ClientSession], *, timeout: float, max_body: int = MAX_BODY,
        deadlines: Deadlines | None = None,
    ) -> None:
        self._session = session
        self.timeout = timeout
        self.max_body = max_body
        self.deadlines = deadlines or Deadlines()
        self._urls: dict[tuple[str, str], URL] = {}

    def _url(self, url: str, params: dict[str, Any] | None) -> URL:
        query = urlencode(params) if params else ""
        cache_key = (url, query)
        parsed = self._urls.get(cache_key)
        if parsed is None:
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()
            parsed = self._urls[cache_key] = URL(f"{url}?{query}" if query else url)
        return parsed

    async def get(
        self, url: str, *, headers: dict[str, str], params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> LeanResponse:
        seconds = self.timeout if timeout is None else timeout
        target = self._url(url, params)
        headers = {"Accept-Encoding": ACCEPT_ENCODING, "User-Agent": USER_AGENT, **headers}
        try:
            with self.deadlines.limit(seconds):
                return await self._get(target, headers)
        except TimeoutError:
            raise httpx2.ReadTimeout(f"no answer within {seconds:g}s") from None
        except aiohttp.ClientConnectorError as exc:  # refused, no route, no such host
            raise httpx2.ConnectError(f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
            raise httpx2.ConnectError(f"the connection ended before the answer ({type(exc).__name__})") from None
        except aiohttp.ClientPayloadError as exc:
            raise httpx2.ReadError(f"the answer's body could not be read ({exc})") from None
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise httpx2.UnsupportedProtocol(f"not an http(s) URL: {exc}") from None
        except aiohttp.ClientResponseError as exc:  # a malformed status line or header block
            raise httpx2.RemoteProtocolError(f"the answer is not HTTP ({exc.message})") from None

    async def _get(self, url: URL, headers: dict[str, str]) -> LeanResponse:
        session = self._session()
        response = await session.request("GET", url, headers=headers, allow_redirects=False,
                                         auto_decompress=False, timeout=NO_TIMEOUT)
        try:
            limit = self.max_body
            declared = response.content_length
            if declared is not None and declared > limit:
                raise BodyTooLarge(f"the answer declares {declared} bytes, more than {_mib(limit)}")
            decoder = _decoder(response.headers)
            content = await self._read(response, decoder, limit)
        except BaseException:
            response.close()  # never hand a half-read connection back to the pool
            raise
        response.release()
        return LeanResponse(response.status, response.headers, content, response.reason or "")

    @staticmethod
    async def _read(response: aiohttp.ClientResponse, decoder: _Inflate | None, limit: int) -> bytes:
        parts: list[bytes] = []
        wire = decoded = 0
        stream = response.content
        while chunk := await stream.readany():
            wire += len(chunk)
            if wire > limit:
                raise BodyTooLarge(f"the answer is larger than {_mib(limit)}")
            for piece in _pieces(decoder, chunk):
                decoded += len(piece)
                if decoded > limit:
                    raise BodyTooLarge(f"the answer decodes to more than {_mib(limit)}")
                parts.append(piece)
        if decoder is not None:
            tail = decoder.flush()
            if decoded + len(tail) > limit:
                raise BodyTooLarge(f"the answer decodes to more than {_mib(limit)}")
            parts.append(tail)
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _pieces(decoder: _Inflate | None, chunk: bytes) -> Iterator[bytes]:
    if decoder is None:
        yield chunk
    else:
        yield from decoder.feed(chunk)


def lean_of(http: Any) -> LeanHttp | None:
    """The lean path of a shared client made by `clients.make_http_client`, None for any other client
    (a test's plain client, one that goes through a proxy): the probe then takes the SDK path."""
    lean = getattr(http, "keywatch_lean", None)
    return lean if isinstance(lean, LeanHttp) else None
