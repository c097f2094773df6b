"""The one HTTP server: /metrics, /healthz (alive), /readyz (config loaded, database reachable, first cycle done),
and the read-only status page at / (keywatch/statuspage.py renders it).

Other parts (the leak receivers) mount handlers on its `Routes` at any time, also after it started (the
capabilities start after the server): each one a POST path of its own, unmounted when they close.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from keywatch.domain import Secret
from keywatch.statuspage import EVENTS, BadQuery, Query, StatusPage, is_loopback

ReadyFn = Callable[[], tuple[bool, dict[str, bool]]]


class Body(Protocol):
    """A body to send: its length in bytes, and its blocks, which may be made as they are taken."""

    length: int

    def __iter__(self) -> Iterator[bytes]: ...


@runtime_checkable
class Prepared(Protocol):
    """What `render` may return instead of chunks to render: a body made ahead, and the Content-Encoding
    it is in (None: plain text). `scraper` is the scraping client's address."""

    def __iter__(self) -> Iterator[bytes]: ...

    async def prepared(self, gzip: bool, scraper: str | None = None) -> tuple[Body, str | None]: ...


RenderFn = Callable[[], Iterator[bytes]]
BATCH = 16  # chunks rendered per trip to the worker thread


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Routes:
    """POST handlers mounted by path while the server runs (aiohttp's own router is frozen at start)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def mount(self, path: str, handler: Handler) -> None:
        if path in self._handlers:
            raise ValueError(f"{path} is already served by another receiver")
        self._handlers[path] = handler

    def unmount(self, path: str) -> None:
        self._handlers.pop(path, None)

    def get(self, path: str) -> Handler | None:
        return self._handlers.get(path)

    def paths(self) -> list[str]:
        return sorted(self._handlers)


class ListenError(Exception):
    """The server cannot listen on its address (in use, not this host's, a name that does not resolve)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


class WebServer:
    def __init__(self, listen: str, render: RenderFn, ready: ReadyFn, routes: Routes | None = None) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.render = render
        self.ready = ready
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self._runner: web.AppRunner | None = None
        self.bound_port: int | None = None
        self._page: StatusPage
        self._token: Secret | None = None
        self.routes = routes or Routes()
        self.details: Callable[[], dict[str, Any]] | None = None  # more for /readyz (the cluster's view)

    def add_status_page(self, page: StatusPage, token: Secret | None) -> None:
        """Serve `page` at `/`. Off loopback it answers only with `token` (Bearer, or as a Basic password)."""
        self._page = page
        self._token = token
        self.app.router.add_get("/", self._status)

    async def _status(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            query = Query.parse(request.query)
        except BadQuery as exc:
            return web.Response(status=400, text=f"{exc}\n", headers=PAGE_HEADERS)
        loop = asyncio.get_running_loop()
        try:
            events = await loop.run_in_executor(None, self._page.source.events, EVENTS)
        except Exception:  # the database is down or locked: the page still shows the keys
            events = None
        body = await loop.run_in_executor(None, self._page.render, query, events)
        return web.Response(text=body, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)

    def _refuse(self, request: web.Request) -> web.Response | None:
        token = self._token
        if token is None:
            if is_loopback(self.host):
                return None
            return web.Response(status=403, headers=PAGE_HEADERS, text=(
                f"The status page is off: daemon.listen ({self.host}:{self.port}) is not a loopback address, "
                "so it needs daemon.status_token (e.g. status_token = \"env:KEYWATCH_STATUS_TOKEN\").\n"))
        presented = _presented(request)
        if presented is not None and hmac.compare_digest(presented, token.reveal().encode()):
            return None
        return web.Response(status=401, text="The status page needs daemon.status_token.\n",
                            headers={**PAGE_HEADERS, "WWW-Authenticate": 'Basic realm="keywatch", charset="UTF-8"'})

    async def _mounted(self, request: web.Request) -> web.StreamResponse:
        handler = self.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        if request.method != "POST":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # a receiver's bug answers 500 without a trace of the request in the answer
            import structlog

            structlog.get_logger("keywatch.web").exception("receiver_failed", path=request.path)
            return web.Response(status=500, text="internal error\n")

    async def start(self) -> None:
        # Last, so every fixed route (and the status page at /) is matched first.
        self.app.router.add_route("*", "/{tail:.*}", self._mounted)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:  # socket.gaierror included
            await self.stop()
            raise ListenError(f"{self.host}:{self.port}", _bind_reason(exc)) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        chunks = self.render()
        if isinstance(chunks, Prepared):
            # Ready-made blocks (the metrics' own rendering, kept between scrapes): written as they are,
            # with their length, compressed when the scraper asks for gzip (Prometheus does).
            body, encoding = await chunks.prepared(_accepts_gzip(request), request.remote)
            headers = {"Content-Type": CONTENT_TYPE_LATEST, "Vary": "Accept-Encoding"}
            if encoding:
                headers["Content-Encoding"] = encoding
            response = web.StreamResponse(headers=headers)
            response.content_length = body.length
            await response.prepare(request)
            for block in body:  # a block at a time: a plain-text body is inflated as it goes out
                await response.write(block)
            await response.write_eof()
            return response
        # Chunks rendered on demand are CPU work: they are made in a worker thread, a few at a time,
        # and each piece is written out as it comes, so the body never exists whole in memory.
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(headers={"Content-Type": CONTENT_TYPE_LATEST})
        await response.prepare(request)
        while batch := await loop.run_in_executor(None, _take, chunks, BATCH):
            for chunk in batch:
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, checks = self.ready()
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if self.details is not None:
            body["cluster"] = self.details()
        return web.json_response(body, status=200 if ok else 503)


# No script may run on the page (it has none), nothing is cached, nothing frames it.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _presented(request: web.Request) -> bytes | None:
    """The token of `Authorization: Bearer T` or the password of `Authorization: Basic` (any user name)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        return decoded.partition(b":")[2]
    return None


def _bind_reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another keywatch, or another program, listens there)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "the address is not one of this host's"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc.strerror})"
    return exc.strerror or type(exc).__name__


def _take(chunks: Iterator[bytes], n: int) -> list[bytes]:
    return list(itertools.islice(chunks, n))


def _accepts_gzip(request: web.Request) -> bool:
    for item in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            return not (q.startswith("q=") and _q(q[2:]) == 0)
    return False


def _q(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 1.0
