"""The `keywatch` parser and `main`: each module in COMMAND_MODULES adds its subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from keywatch import __version__
from keywatch.cli.common import EXIT_INTERRUPTED, EXIT_PIPE, EXIT_USAGE, CliError, HelpFormatter, exit_codes_text

# Each defines `add_commands(subparsers)`, built on keywatch.cli.common.add_command/add_group; the order
# here is the order `keywatch --help` lists them in.
COMMAND_MODULES: list[str] = [
    "keywatch.cli.run",
    "keywatch.cli.check",
    "keywatch.cli.status",
    "keywatch.cli.config",
    "keywatch.cli.db",
    "keywatch.cli.demo",
    "keywatch.cli.sim",
    "keywatch.cli.alerts",
    "keywatch.cli.keys",
    "keywatch.cli.policy",
    "keywatch.cli.usage",
    "keywatch.cli.doctor",
    "keywatch.cli.rotate",
    "keywatch.cli.scan",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keywatch",
        description="Watch the health, spend and safety of LLM provider API keys.",
        epilog=exit_codes_text("see each command's --help"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keywatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from keywatch.settings.loader import ConfigError

    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a pipe closed early shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _output_closed()
    except ConfigError as exc:
        for p in exc.problems:
            print(f"{exc.source}: {p}", file=sys.stderr)
        return EXIT_USAGE
    except CliError as exc:
        print(f"keywatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _output_closed() -> int:
    """The reader of stdout went away (`keywatch status --json | head`): end quietly. Python would flush
    stdout again at exit and print a BrokenPipeError; point it at /dev/null first."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    if args.log_level is not None:
        from keywatch import logging as kwlog

        kwlog.setup("auto", args.log_level)
    return args.handler(args)
