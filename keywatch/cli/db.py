"""`keywatch db upgrade`."""

from __future__ import annotations

import argparse
from typing import Any

from keywatch.cli.common import EXIT_OK, CliError, add_command, add_group, db_error, new_store


def add_commands(sub: Any) -> None:
    dsub = add_group(sub, "db", "database maintenance",
                     "Database maintenance: the tables keywatch keeps its state, events and usage in.")
    add_command(dsub, "upgrade", cmd_db_upgrade, "apply pending migrations (the daemon also does this at start)",
                log_level="info")


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply the pending database migrations (the daemon also does this when it starts)."""
    from keywatch.settings.loader import load
    from keywatch.store.repo import describe_url

    store = new_store(load(args.config))
    try:
        applied = store.upgrade()
    except Exception as exc:
        raise CliError(f"cannot migrate {describe_url(store.url)} (daemon.database): {db_error(exc)}") from None
    finally:
        store.dispose()
    print(f"{describe_url(store.url)}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return EXIT_OK
