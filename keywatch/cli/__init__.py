"""The `keywatch` command: the daemon, one-shot checks, status and operator actions.

`keywatch.cli.common` holds what the commands share (exit codes, errors, tables, the database); one
module per command group adds its subcommands (listed in `keywatch.cli.app.COMMAND_MODULES`).
"""

from __future__ import annotations

from keywatch.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
