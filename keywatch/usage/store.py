"""Reading and writing usage rollups, balances, pull status and budget marks.

Synchronous, like keywatch.store.repo: the daemon calls it in a worker thread. A pull's rows replace the
window it read inside one transaction, so the same figures pulled twice are counted once, and a failed pull
(which writes nothing) leaves the last good figures in place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, and_, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from keywatch.runtime import fence
from keywatch.store.repo import dialect_insert
from keywatch.usage.models import BudgetMarkRow, UsageBalanceRow, UsageRollupRow, UsageSourceRow
from keywatch.usage.money import from_nanos, to_nanos
from keywatch.usage.rows import Balance, PullResult, UsageRow, merge

CHUNK = 5000


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Sums over some buckets of one (account, provider, scope, currency) — or whatever was grouped."""

    group: tuple[Any, ...]
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    requests: int
    cost: Decimal
    has_cost: bool

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class SourceStatus:
    account: str
    provider: str
    last_attempt_at: datetime | None
    last_success_at: datetime | None
    stale: bool
    last_error: str | None


T = UsageRollupRow.__table__
GROUP_COLUMNS = {
    "account": T.c.account, "provider": T.c.provider, "scope": T.c.scope, "currency": T.c.currency,
    "model": T.c.model, "line_item": T.c.line_item, "source": T.c.source, "width": T.c.width, "bucket": T.c.bucket,
}


INSERT_COLUMNS = ("bucket", "account", "source", "width", "scope", "model", "line_item", "currency", "provider",
                  "input_tokens", "output_tokens", "cached_tokens", "requests", "cost_nanos")
# Built from the constants above only (no input reaches it); per DB-API paramstyle: sqlite3 ?, psycopg %s.
INSERT_SQL = {
    mark: f"INSERT INTO {T.name} ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join([mark] * len(INSERT_COLUMNS))})"  # noqa: S608
    for mark in ("?", "%s")
}


class UsageStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)

    # -- writes ---------------------------------------------------------------------------------------
    def apply(self, result: PullResult, at: datetime) -> None:
        """Replace the windows the pull owns with its rows, add its balances, record the pull's outcome; the
        fencing check (runtime.fence, NotLeader) in the same transaction: a deposed leader records nothing."""
        rows = merge(result.rows)
        with self.session.begin() as s:
            fence(s)
            for r in result.replaces:
                cond = [T.c.account == r.account, T.c.source == r.source, T.c.width == r.width,
                        T.c.bucket >= r.start, T.c.bucket < r.end]
                if r.scope is not None:
                    cond.append(T.c.scope == r.scope)
                s.execute(delete(T).where(and_(*cond)))
            self._insert_rows(s, rows)
            if result.balances:
                self._insert_balances(s, result.balances)
            self._set_source(s, result.account, result.provider, at, ok=not result.errors,
                             error="; ".join(result.errors)[:2000] or None)

    def write_rows(self, rows: Iterable[UsageRow]) -> None:
        """Bulk insert without replacing (benchmarks and fixtures)."""
        with self.session.begin() as s:
            self._insert_rows(s, rows)

    def _insert_rows(self, s: Session, rows: Iterable[UsageRow]) -> None:
        """Rows go to the driver's executemany as plain tuples, in chunks: SQLAlchemy's per-row parameter
        processing cost more than SQLite's inserts themselves. The bucket still goes through the column's type,
        so it is stored exactly as a query compares it."""
        conn = s.connection()
        dialect = conn.dialect
        sql = INSERT_SQL["?" if dialect.paramstyle == "qmark" else "%s"]
        bucket = T.c.bucket.type.process_bind_param
        chunk: list[tuple[Any, ...]] = []
        for r in rows:
            chunk.append((bucket(r.bucket, dialect), r.account, r.source, r.width, r.scope, r.model, r.line_item,
                          r.currency, r.provider, r.input_tokens, r.output_tokens, r.cached_tokens, r.requests,
                          None if r.cost is None else to_nanos(r.cost)))
            if len(chunk) >= CHUNK:
                conn.exec_driver_sql(sql, chunk)
                chunk = []
        if chunk:
            conn.exec_driver_sql(sql, chunk)

    def _insert_balances(self, s: Session, balances: list[Balance]) -> None:
        table = UsageBalanceRow.__table__
        ins = dialect_insert(self.engine, table)
        s.execute(
            ins.on_conflict_do_nothing(index_elements=["account", "currency", "at"]),
            [{"account": b.account, "currency": b.currency, "at": b.at, "provider": b.provider,
              "balance_nanos": to_nanos(b.balance)} for b in balances],
        )

    def _set_source(self, s: Session, account: str, provider: str, at: datetime, ok: bool, error: str | None) -> None:
        row = s.get(UsageSourceRow, account)
        if row is None:
            row = UsageSourceRow(account=account, provider=provider, stale=False)
            s.add(row)
        row.provider = provider
        row.last_attempt_at = at
        row.stale = not ok
        row.last_error = error
        if ok:
            row.last_success_at = at

    def mark_failed(self, account: str, provider: str, at: datetime, error: str) -> None:
        with self.session.begin() as s:
            self._set_source(s, account, provider, at, ok=False, error=error[:2000])

    # -- reads ----------------------------------------------------------------------------------------
    def aggregate(
        self, since: datetime, until: datetime | None = None, by: Iterable[str] = ("account", "provider", "scope",
                                                                                 "currency"),
    ) -> list[Aggregate]:
        cols = [GROUP_COLUMNS[b] for b in by]
        q = select(
            *cols,
            func.coalesce(func.sum(T.c.input_tokens), 0),
            func.coalesce(func.sum(T.c.output_tokens), 0),
            func.coalesce(func.sum(T.c.cached_tokens), 0),
            func.coalesce(func.sum(T.c.requests), 0),
            func.sum(T.c.cost_nanos),
        ).where(T.c.bucket >= since)
        if until is not None:
            q = q.where(T.c.bucket < until)
        q = q.group_by(*cols)
        with self.engine.connect() as conn:
            out = []
            for row in conn.execute(q):
                n = len(cols)
                out.append(Aggregate(tuple(row[:n]), int(row[n]), int(row[n + 1]), int(row[n + 2]),
                                     int(row[n + 3]), from_nanos(row[n + 4]), row[n + 4] is not None))
            return out

    def sources(self) -> dict[str, SourceStatus]:
        with self.session() as s:
            return {r.account: SourceStatus(r.account, r.provider, r.last_attempt_at, r.last_success_at, r.stale,
                                            r.last_error) for r in s.scalars(select(UsageSourceRow))}

    def balances(self, account: str, since: datetime) -> list[Balance]:
        table = UsageBalanceRow
        q = select(table).where(table.account == account, table.at >= since).order_by(table.currency, table.at)
        with self.session() as s:
            return [Balance(r.account, r.provider, r.currency, r.at, from_nanos(r.balance_nanos))
                    for r in s.scalars(q)]

    def last_balance_before(self, account: str, currency: str, before: datetime) -> Balance | None:
        table = UsageBalanceRow
        q = (select(table).where(table.account == account, table.currency == currency, table.at < before)
             .order_by(table.at.desc()).limit(1))
        with self.session() as s:
            r = s.scalars(q).first()
            return Balance(r.account, r.provider, r.currency, r.at, from_nanos(r.balance_nanos)) if r else None

    def marks(self, budget: str, period_start: datetime) -> set[str]:
        q = select(BudgetMarkRow.mark).where(BudgetMarkRow.budget == budget, BudgetMarkRow.period_start == period_start)
        with self.session() as s:
            return set(s.scalars(q))

    def add_marks(
        self, budget: str, period_start: datetime, marks: Iterable[str], at: datetime, ratio: Decimal
    ) -> None:
        table = BudgetMarkRow.__table__
        ins = dialect_insert(self.engine, table)
        values = [{"budget": budget, "period_start": period_start, "mark": m, "announced_at": at,
                   "ratio_ppm": int(min(ratio, Decimal(1000)) * 1_000_000)} for m in marks]
        if not values:
            return
        with self.session.begin() as s:
            fence(s)  # a mark is what stops the alert being sent twice: only the leader records one
            s.execute(ins.on_conflict_do_nothing(index_elements=["budget", "period_start", "mark"]), values)

