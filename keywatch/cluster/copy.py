"""`keywatch db copy`: every table of one keywatch database into another (SQLite to PostgreSQL, or back).

The target is migrated first and must hold no state yet. Rows go through the tables' own column types, so
what one backend stores its way (SQLite's integer microseconds for usage buckets, PostgreSQL's timestamptz)
arrives the other's way. The cluster tables are not copied: members and the leadership belong to the
instances that run on a database, and the target starts with none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Table, func, select, text

import keywatch.cluster.models
import keywatch.leaks.models
import keywatch.notify.models
import keywatch.rotation.models
import keywatch.usage.models  # noqa: F401  (every table keywatch has is in Base.metadata)
from keywatch.store.models import Base
from keywatch.store.repo import Store

CHUNK = 2000
NOT_COPIED = {"cluster_members", "cluster_leader", "alembic_version"}


class CopyRefused(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Copied:
    table: str
    rows: int


def tables() -> list[Table]:
    return [t for t in Base.metadata.sorted_tables if t.name not in NOT_COPIED]


def copy_database(source: Store, target: Store, progress: Callable[[Copied], None] | None = None) -> list[Copied]:
    """Blocking. Raises CopyRefused when the target already holds state (nothing is written then)."""
    source.ping()
    target.upgrade()
    source_tables = set(_table_names(source))
    with target.engine.connect() as c:
        busy = [t.name for t in tables() if c.execute(select(func.count()).select_from(t)).scalar_one()]
    if busy:
        raise CopyRefused(
            f"the target already holds keywatch state (tables {', '.join(busy)}); copy into an empty database"
        )
    done: list[Copied] = []
    with source.engine.connect() as src, target.engine.begin() as dst:
        for t in tables():
            n = 0
            if t.name in source_tables:
                result = src.execution_options(stream_results=True).execute(select(t))
                while rows := result.fetchmany(CHUNK):
                    dst.execute(t.insert(), [dict(r._mapping) for r in rows])
                    n += len(rows)
            if target.engine.dialect.name == "postgresql":
                _reset_sequences(dst, t)
            done.append(Copied(t.name, n))
            if progress is not None:
                progress(done[-1])
    return done


def _table_names(store: Store) -> list[str]:
    from sqlalchemy import inspect

    return inspect(store.engine).get_table_names()


def _reset_sequences(conn: object, t: Table) -> None:
    """Rows came with their ids: the next id PostgreSQL hands out must come after them."""
    for col in t.primary_key.columns:
        if col.autoincrement is True:
            conn.execute(  # type: ignore[attr-defined]
                text(
                    f"SELECT setval(pg_get_serial_sequence('{t.name}', '{col.name}'), "  # noqa: S608
                    f"COALESCE((SELECT max({col.name}) FROM {t.name}), 0) + 1, false)"
                )
            )
