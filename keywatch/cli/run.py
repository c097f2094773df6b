"""`keywatch run`: the daemon."""

from __future__ import annotations

import argparse
from typing import Any

from keywatch.cli.common import add_command


def add_commands(sub: Any) -> None:
    add_command(sub, "run", cmd_run, "run the daemon (probe on a schedule, serve /metrics)", log_level=None)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon: probe every key on a schedule, apply policies and alerts, serve /metrics.
    SIGHUP reloads the config, SIGTERM stops it."""
    from keywatch.heap import steady_heap

    steady_heap()  # first: the imports and the config's first parse already free large blocks
    from keywatch import aio
    from keywatch import logging as kwlog
    from keywatch.daemon import Daemon
    from keywatch.settings.loader import load_settings

    # Refused before anything starts; the daemon loads it again, as on a reload. `load_settings` keeps no [[keys]]
    # models: this frame lives as long as the daemon.
    daemon = load_settings(args.config).daemon
    kwlog.setup(daemon.log_format, daemon.log_level)
    return aio.run(Daemon(args.config).run())
