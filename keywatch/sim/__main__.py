"""`python -m keywatch.sim`: run the simulator in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from keywatch.sim.server import Simulator, build_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m keywatch.sim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    return parser.parse_args(argv)


def one_line(url: str, _: web.Application) -> None:
    # The one line scripts wait for: anything else printed here would break them.
    print(f"keywatch-sim listening on {url}", flush=True)


async def serve(
    host: str, port: int, latency_ms: float, announce: Callable[[str, web.Application], None] = one_line
) -> None:
    """Serve until SIGTERM or SIGINT; `announce(url, app)` says where, once listening (`keywatch sim` prints
    the base URLs and the control API; `python -m keywatch.sim` one line)."""
    sim = Simulator(latency_ms=latency_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await sim.start(host, port)
    announce(url, build_app(sim.state))  # the same routes the running app serves, for the guide to list
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.latency_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
