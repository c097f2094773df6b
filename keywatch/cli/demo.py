"""`keywatch demo`: the daemon against the built-in provider simulator."""

from __future__ import annotations

import argparse
from typing import Any

from keywatch.cli.common import add_command


def add_commands(sub: Any) -> None:
    p = add_command(sub, "demo", cmd_demo, "run the daemon against the built-in provider simulator",
                    config=False, log_level=None)
    p.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--interval", default="5s", help="probe interval (default 5s)")
    p.add_argument("--listen", default="127.0.0.1:9464", help="where /metrics is served (default 127.0.0.1:9464)")
    p.add_argument("--verbose", action="store_true",
                   help="print the daemon's log on stderr (default: to keywatch.log next to the demo's config)")


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon against the built-in provider simulator, with a made-up fleet of keys; no real
    provider is called."""
    from keywatch.demo import run_demo

    return run_demo(duration=args.duration, interval=args.interval, listen=args.listen, verbose=args.verbose)
