"""The one HTTP server: /metrics, /healthz (alive), /readyz (config loaded, database reachable, first cycle done).

Other parts (webhook receivers) add routes to the same app before it starts.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import socket
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

ReadyFn = Callable[[], tuple[bool, dict[str, bool]]]
RenderFn = Callable[[], Iterator[bytes]]
BATCH = 16  # chunks rendered per trip to the worker thread


class ListenError(Exception):
    """The server cannot listen on its address (in use, not this host's, a name that does not resolve)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


class WebServer:
    def __init__(self, listen: str, render: RenderFn, ready: ReadyFn) -> None:
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

    async def start(self) -> None:
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
        # Rendering thousands of series is CPU work: it runs in a worker thread, a few chunks at a time,
        # and each piece is written out as it comes, so the body never exists whole in memory.
        loop = asyncio.get_running_loop()
        chunks = self.render()
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
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)


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
