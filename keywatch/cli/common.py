"""What every `keywatch` command shares: the exit codes, the error a user can fix, the `-c` option, the
parser helpers that write each command's help, the table printer and opening the database.

Nothing here imports a capability at module level: probe worker processes (spawn) import the CLI too.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

DEFAULT_CONFIG = os.environ.get("KEYWATCH_CONFIG", "/etc/keywatch/keywatch.toml")

# The exit codes of every command, in one place (docs/cli.md has the same table; a test compares them). A
# command names the ones it can return (ok, usage, interrupted and output closed always), and says in its help
# what "needs attention" means for it. Codes are never renumbered: scripts and systemd
# (RestartPreventExitStatus=2) depend on them.
EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    EXIT_ATTENTION: "needs attention",
    EXIT_USAGE: "config, usage or database error (the message says what to fix)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_PIPE: "output closed early (piped into head); nothing else went wrong",
}

# What exit 1 means for `check` and `status`.
UNHEALTHY = "a key is not healthy, or is compromised"

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A problem the user can fix; printed as `keywatch: <message>` without a traceback, exit 2."""


def exit_codes_text(attention: str | None) -> str:
    """The `exit codes:` block of a command's help; `attention` is what exit 1 means for it (None: no 1)."""
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES.items():
        if code == EXIT_ATTENTION:
            if attention is None:
                continue
            meaning = f"{meaning}: {attention}"
        lines.append(f"  {code:<4} {meaning}")
    return "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """Wraps a description or epilog line by line, and keeps indented lines (the exit-code rows) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n".join(
            indent + line if line.startswith(" ") or not line.strip() else fill(line, width, indent)
            for line in text.splitlines()
        )


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """`-c/--config`, the same on every subcommand."""
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG,
                   help=f"config file (default: $KEYWATCH_CONFIG or {DEFAULT_CONFIG})")


def add_command(
    sub: Any,
    name: str,
    handler: Handler,
    help: str,
    *,
    attention: str | None = None,
    config: bool = True,
    log_level: str | None = "warning",
) -> argparse.ArgumentParser:
    """A subcommand: `handler(args)` runs it and returns the exit code; its --help shows the handler's
    docstring as the description, and the exit codes.

    `attention`: what exit 1 means for this command (None: it does not return 1). `log_level`: the console
    log level set before the handler runs (None: the handler sets up logging itself).
    """
    doc = inspect.getdoc(handler)
    if not doc:
        raise TypeError(f"{handler.__qualname__} needs a docstring: it is `keywatch {name} --help`'s description")
    description = "\n\n".join(" ".join(paragraph.split()) for paragraph in doc.split("\n\n"))
    p = _parser(sub, name, help, description, attention)
    if config:
        add_config_arg(p)
    p.set_defaults(handler=handler, log_level=log_level)
    return p


def add_group(sub: Any, name: str, help: str, description: str, *, attention: str | None = None) -> Any:
    """A command with actions (`keywatch config validate`); returns the subparsers to add them to."""
    p = _parser(sub, name, help, description, attention)
    return p.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def _parser(sub: Any, name: str, help: str, description: str, attention: str | None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description, epilog=exit_codes_text(attention),
                          formatter_class=HelpFormatter)


# -- output -------------------------------------------------------------------------------------------------
def print_table(headers: list[str], rows: list[list[str]], out: Any = None, *, cut_last: bool = True) -> None:
    """Columns padded to their widest cell. The last column is cut at 70 characters, unless `cut_last` is
    False (it carries a reason that must be read whole)."""
    out = out or sys.stdout
    last_width = 70
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    widths[-1] = min(widths[-1], last_width)

    def line(cells: list[str]) -> str:
        head = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        last = cells[-1]
        if not cut_last:
            return "  ".join([*head, last])
        last = last if len(last) <= last_width else last[: last_width - 1] + "…"
        return "  ".join([*head, last.ljust(widths[-1])]).rstrip()

    print(line(headers), file=out)
    for r in rows:
        print(line(r), file=out)


def detail_text(code: str | None, message: str | None) -> str:
    """A probe's error for a DETAIL column: `code: message`, either part may be missing."""
    return (code or "") + (f": {message}" if message else "")


# -- the database -------------------------------------------------------------------------------------------
def new_store(config: Any, *, create: bool = True) -> Any:
    """The Store the config names (or the default database); nothing is connected yet.

    `create=False` (commands that only read): a missing SQLite file is a CliError naming daemon.database, and
    the file is never created (an empty database would hide the mistake of a wrong config)."""
    from keywatch.store.repo import Store, default_database_url

    store = Store(config.daemon.database or default_database_url())
    if not create:
        store.may_create = False
        path = store.sqlite_path
        if path is not None and not path.exists():
            store.dispose()
            where = "daemon.database" if config.daemon.database else "the default database (daemon.database unset)"
            raise CliError(
                f"no database at {path} ({where}); start `keywatch run` with this config first, or point "
                "daemon.database at the daemon's database"
            )
    return store


def open_store(config: Any, *, migrate: bool) -> Any:
    """The Store, checked (or migrated, with `migrate`); a CliError when the database cannot be used. Without
    `migrate` the database must exist already."""
    from keywatch.store.repo import db_error, describe_url

    store = new_store(config, create=migrate)
    try:
        if migrate:
            store.upgrade()
        else:
            store.ping()
    except Exception as exc:
        store.dispose()
        raise CliError(f"cannot use the database {describe_url(store.url)} (daemon.database): "
                       f"{db_error(exc)}") from None
    return store


