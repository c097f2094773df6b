"""Many rows through one statement, straight to the driver's executemany.

SQLAlchemy's per-row parameter handling (building each row's parameters from the compiled statement, then
running every type's bind processor) costs more CPU than the database's own work for an executemany: at
10,000 keys it was two thirds of a cycle's write. `Bulk` compiles the statement once per database and
hands the driver plain rows. The SQL is SQLAlchemy's own, and so is every value's conversion (the compiled
statement's bind processors), except the UTC datetimes keywatch stores, which take a shortcut that is checked
against SQLAlchemy's conversion when the statement is compiled (and not taken when the two differ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect

from keywatch.store.models import UTCDateTime

_SAMPLES = (datetime(2026, 12, 4, 18, 5, 1, 7, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


def _utc_datetime(dialect: Dialect, slow: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The bind conversion of a UTCDateTime column for an aware UTC value without SQLAlchemy's general path
    (astimezone, replace, then SQLite's string formatting); any other value goes the general path."""
    if dialect.name == "sqlite":
        def fast(value: Any) -> Any:  # SQLite stores naive UTC text: "2026-12-04 18:05:01.000007"
            if value is not None and value.tzinfo is UTC:
                return value.isoformat(" ", "microseconds")[:26]
            return slow(value)
    else:
        def fast(value: Any) -> Any:  # the driver takes the aware datetime itself
            return value if value is not None and value.tzinfo is UTC else slow(value)
    return fast if all(fast(d) == slow(d) for d in _SAMPLES) else slow


class Bulk:
    """`statement` compiled for `dialect` with the parameters `names`, run for many rows at once: `run(conn,
    rows)` takes each row as a mapping of those names to values and returns how many rows the statement
    changed, as the driver counts them (None where the driver's count for an executemany is not reliable)."""

    def __init__(self, statement: Any, dialect: Dialect, names: Iterable[str]) -> None:
        names = list(names)
        compiled = statement.compile(dialect=dialect, column_keys=names, for_executemany=True)  # no RETURNING
        self.sql = compiled.string
        order = list(compiled.positiontup) if compiled.positional else list(compiled.binds)
        unknown = set(order) - set(names)
        if unknown:
            raise ValueError(f"the statement takes parameters not given: {', '.join(sorted(unknown))}")
        self._order = tuple(order)
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(order):
            proc = compiled._bind_processors.get(name)  # the conversion SQLAlchemy would run
            if proc is not None:
                if isinstance(compiled.binds[name].type, UTCDateTime):
                    proc = _utc_datetime(dialect, proc)
                self._convert.append((i, proc))
        self._positional = compiled.positional
        self._counts = bool(dialect.supports_sane_multi_rowcount)

    def params(self, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        order, convert = self._order, self._convert
        out: list[Any] = []
        for row in rows:
            values = [row[n] for n in order]
            for i, proc in convert:
                values[i] = proc(values[i])
            out.append(tuple(values) if self._positional else dict(zip(order, values, strict=True)))
        return out

    def run(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int | None:
        params = self.params(rows)
        if not params:
            return 0
        result = conn.exec_driver_sql(self.sql, params)
        return result.rowcount if self._counts else None
