"""`keywatch sim`: the built-in provider simulator in the foreground, for trying keywatch without a real key."""

from __future__ import annotations

import argparse
from typing import Any

from keywatch.cli.common import add_command


def add_commands(sub: Any) -> None:
    p = add_command(sub, "sim", cmd_sim, "run the built-in provider simulator in the foreground",
                    config=False, log_level=None)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8900, help="port (default 8900; 0 picks a free one)")
    p.add_argument("--latency-ms", type=float, default=0.0, metavar="MS", help="added to every answer (default 0)")


def cmd_sim(args: argparse.Namespace) -> int:
    """Run the provider simulator (a real HTTP server answering like the providers' documented APIs) until
    Ctrl-C or SIGTERM. It prints where it listens, each provider's base URL to put in a config, and the
    control API that adds keys and chooses their behaviour. It starts with no keys."""
    import asyncio

    from keywatch.cli.common import CliError
    from keywatch.sim.__main__ import serve
    from keywatch.sim.guide import guide

    if args.latency_ms < 0:
        raise CliError("--latency-ms must be 0 or more")
    try:
        asyncio.run(serve(args.host, args.port, args.latency_ms, announce=lambda url, app: print(
            guide(url, app), flush=True)))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
