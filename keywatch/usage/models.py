"""Usage tables. Money is stored as integer nano-dollars (1e-9 of the currency unit): exact on every
backend (SQLite has no exact decimal type), and fine enough for Anthropic's fractional cents."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from keywatch.store.models import Base


class UsageRollupRow(Base):
    """One bucket of one provider scope. A pull replaces the rows of the window it read, so re-pulling
    the same or an overlapping window never double counts."""

    __tablename__ = "usage_rollups"
    __table_args__ = (Index("ix_usage_rollups_bucket", "bucket"), Index("ix_usage_rollups_scope", "scope", "bucket"))

    account: Mapped[str] = mapped_column(String(128), primary_key=True)  # the source: an account or a key
    source: Mapped[str] = mapped_column(String(24), primary_key=True)  # usage, cost, key_usage, balance, ...
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)  # key:<name>, project:<id>, ...
    width: Mapped[str] = mapped_column(String(4), primary_key=True)  # 1h or 1d
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
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
