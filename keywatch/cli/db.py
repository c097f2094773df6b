"""`keywatch db upgrade` and `keywatch db copy`."""

from __future__ import annotations

import argparse
from typing import Any

from keywatch.cli.common import EXIT_OK, CliError, add_command, add_group, new_store


def add_commands(sub: Any) -> None:
    dsub = add_group(
        sub,
        "db",
        "database maintenance",
        "Database maintenance: the tables keywatch keeps its state, events and usage in.",
    )
    add_command(
        dsub,
        "upgrade",
        cmd_db_upgrade,
        "apply pending migrations (the daemon also does this at start)",
        log_level="info",
    )
    p = add_command(
        dsub, "copy", cmd_db_copy, "copy every table of one database into another (SQLite to PostgreSQL)", config=False
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="the database to read, e.g. sqlite:////var/lib/keywatch/keywatch.db",
    )
    p.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="the database to write (migrated first; must hold no keywatch state), e.g. "
        "postgresql+psycopg://keywatch@db/keywatch",
    )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply the pending database migrations (the daemon also does this when it starts)."""
    from keywatch.settings.loader import load
    from keywatch.store.repo import db_error, describe_url

    store = new_store(load(args.config))
    try:
        applied = store.upgrade()
    except Exception as exc:
        raise CliError(f"cannot migrate {describe_url(store.url)} (daemon.database): {db_error(exc)}") from None
    finally:
        store.dispose()
    print(f"{describe_url(store.url)}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return EXIT_OK


def cmd_db_copy(args: argparse.Namespace) -> int:
    """Copy a keywatch database into another one: key states, transitions, probe rollups, events, outages,
    alert states, outbox and silences, usage and budget marks, rotations. The target is migrated first and
    must hold no keywatch state; the source is only read. Stop the daemon before copying, then point
    daemon.database at the target."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from keywatch.cluster.copy import CopyRefused, copy_database
    from keywatch.settings.schema import check_database_url
    from keywatch.store.repo import Store, db_error, describe_url

    for flag, url in (("--from", args.source), ("--to", args.target)):
        try:
            check_database_url(url)
        except ValueError as exc:
            raise CliError(f"{flag}: {exc}") from None
    parsed = make_url(args.source)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise CliError(f"--from: no database at {parsed.database}")
    source, target = Store(args.source), Store(args.target)
    source.may_create = False
    try:
        copied = copy_database(source, target)
    except CopyRefused as exc:
        raise CliError(f"--to {describe_url(args.target)}: {exc}") from None
    except Exception as exc:
        raise CliError(
            f"copy from {describe_url(args.source)} to {describe_url(args.target)} failed, no row "
            f"was written: {db_error(exc)}"
        ) from None
    finally:
        source.dispose()
        target.dispose()
    total = sum(c.rows for c in copied)
    print(f"{describe_url(args.source)} -> {describe_url(args.target)}: {total} rows")
    for c in copied:
        print(f"  {c.table}: {c.rows}")
    return EXIT_OK
