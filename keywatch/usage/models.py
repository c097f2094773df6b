"""Usage tables. Money is stored as integer nano-dollars (1e-9 of the currency unit): exact on every
backend (SQLite has no exact decimal type), and fine enough for Anthropic's fractional cents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

from keywatch.store.models import Base

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BucketTime(TypeDecorator[datetime]):
    """A UTC instant; on SQLite stored as integer microseconds since the epoch (8 bytes instead of the
    26-character text SQLite's DATETIME uses), exact, and ordered like the instants it stands for, so range
    comparisons against any datetime keep their meaning. PostgreSQL keeps its native timestamptz."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(BigInteger() if dialect.name == "sqlite" else DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        if dialect.name == "sqlite":
            return (value - EPOCH) // timedelta(microseconds=1)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return EPOCH + timedelta(microseconds=int(value))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UsageRollupRow(Base):
    """One bucket of one provider scope. A pull replaces the rows of the window it read, so re-pulling
    the same or an overlapping window never double counts.

    The primary key leads with the bucket because every read (`aggregate`) and every replace (`apply`) is a
    bucket range, and writes arrive in time order, so they append to the B-tree. On SQLite the table is
    WITHOUT ROWID: the row lives in the primary-key B-tree, so its key columns are stored once rather than in
    a table and again in the key's index. No secondary index: nothing looks rows up except by bucket range."""

    __tablename__ = "usage_rollups"
    __table_args__ = {"sqlite_with_rowid": False}

    bucket: Mapped[datetime] = mapped_column(BucketTime(), primary_key=True)
    account: Mapped[str] = mapped_column(String(128), primary_key=True)  # the source: an account or a key
    source: Mapped[str] = mapped_column(String(24), primary_key=True)  # usage, cost, key_usage, balance, ...
    width: Mapped[str] = mapped_column(String(4), primary_key=True)  # 1h or 1d
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)  # key:<name>, project:<id>, ...
    model: Mapped[str] = mapped_column(String(128), primary_key=True, default="")
    line_item: Mapped[str] = mapped_column(String(200), primary_key=True, default="")
    currency: Mapped[str] = mapped_column(String(8), primary_key=True, default="USD")
    provider: Mapped[str] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanos: Mapped[int | None] = mapped_column(BigInteger)


class UsageBalanceRow(Base):
    """Balances seen over time (DeepSeek, Moonshot); spend is derived from their decreases."""

    __tablename__ = "usage_balances"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    currency: Mapped[str] = mapped_column(String(8), primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    balance_nanos: Mapped[int] = mapped_column(BigInteger)


class UsageSourceRow(Base):
    """Per account: when usage was last pulled successfully, and whether the last pull failed."""

    __tablename__ = "usage_sources"

    account: Mapped[str] = mapped_column(String(128), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    last_attempt_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    stale: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)


class BudgetMarkRow(Base):
    """A threshold (or the forecast warning) already announced for a budget's period."""

    __tablename__ = "budget_marks"

    budget: Mapped[str] = mapped_column(String(128), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    mark: Mapped[str] = mapped_column(String(16), primary_key=True)  # "50", "80", ..., "forecast"
    announced_at: Mapped[datetime]
    ratio_ppm: Mapped[int] = mapped_column(Integer, default=0)
