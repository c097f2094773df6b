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
    from keywatch import aio
    from keywatch import logging as kwlog
    from keywatch.daemon import Daemon
    from keywatch.settings.loader import load

    config = load(args.config)  # refused before anything starts; the daemon loads it again, as on a reload
    kwlog.setup(config.daemon.log_format, config.daemon.log_level)
    del config  # this frame lives as long as the daemon: the validated [[keys]] must not stay with it
    return aio.run(Daemon(args.config).run())
