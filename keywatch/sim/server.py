"""A real HTTP server on loopback that answers like the providers do, for tests, demos and benchmarks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from keywatch.sim import control
from keywatch.sim.common import STATE_KEY, hostile_answers
from keywatch.sim.routes import route_modules
from keywatch.sim.state import SimKey, SimState

T = TypeVar("T")

# Handlers still running at stop (hang, slow) are cancelled after this; tests should not wait for them.
SHUTDOWN_TIMEOUT_S = 0.5


def build_app(state: SimState) -> web.Application:
    """The control API plus every provider module under keywatch/sim/routes/."""
    app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[hostile_answers])
    app[STATE_KEY] = state
    control.register(app, state)
    prefixes: dict[str, str] = {}
    for module in route_modules():
        if module.PREFIX in prefixes:
            raise ValueError(f"{module.__name__} and {prefixes[module.PREFIX]} both claim {module.PREFIX}")
        prefixes[module.PREFIX] = module.__name__
        module.register(app, state)
    return app


class Simulator:
    """Runs on the caller's event loop; use SimulatorThread from synchronous code."""

    def __init__(self, latency_ms: float = 0) -> None:
        self.state = SimState(default_latency_ms=float(latency_ms))
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(
            build_app(self.state),
            access_log=None,  # a line per request would cost more than the answer itself
            handler_cancellation=True,  # a hanging handler ends when its client gives up
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def set_key(
        self,
        secret: str,
        provider: str = "openai",
        behaviour: str = "healthy",
        latency_ms: float | None = None,
        **extra: Any,
    ) -> SimKey:
        """Add or replace a key; takes effect on the next request (call on the simulator's loop)."""
        return self.state.upsert(SimKey(secret, provider, behaviour, latency_ms, dict(extra)))

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class SimulatorThread:
    """A Simulator on its own thread and event loop, for synchronous tests and the CLI demo.

    Every mutation is handed to that loop, so it never races a request being answered.
    """

    def __init__(self, latency_ms: float = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim = Simulator(latency_ms)
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def state(self) -> SimState:
        """Read freely; mutate only through call() or set_key()."""
        return self.sim.state

    @property
    def url(self) -> str:
        if self.sim.url is None:
            raise RuntimeError("simulator not started")
        return self.sim.url

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("simulator thread already started")
        self._thread = threading.Thread(target=self._run, name="keywatch-sim", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("simulator failed to start") from self._error
        return self.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.sim.start(self._host, self._port))
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.sim.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn on the simulator's loop and return its result: the thread-safe way to touch state."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("simulator not started")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return done.result()

    def set_key(
        self,
        secret: str,
        provider: str = "openai",
        behaviour: str = "healthy",
        latency_ms: float | None = None,
        **extra: Any,
    ) -> SimKey:
        return self.call(self.sim.set_key, secret, provider, behaviour, latency_ms, **extra)

    def set_latency(self, latency_ms: float) -> None:
        self.call(setattr, self.sim.state, "default_latency_ms", float(latency_ms))

    def set_propagation_delay(self, seconds: float) -> None:
        """Credentials created or regenerated from now on work only `seconds` after (0: at once)."""
        self.call(setattr, self.sim.state, "propagation_delay_s", float(seconds))

    def reset(self) -> None:
        self.call(self.sim.state.reset)

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
