"""Plain data between collectors, the store and budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

WIDTHS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One bucket of one scope. `cost` None means the source says nothing about money (tokens only)."""

    account: str
    provider: str
    source: str
    scope: str
    width: str
    bucket: datetime
    model: str = ""
    line_item: str = ""
    currency: str = "USD"
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    cost: Decimal | None = None

    def pk(self) -> tuple[str, ...]:
        return (self.account, self.source, self.scope, self.width, self.bucket.isoformat(), self.model,
                self.line_item, self.currency)

    @property
    def end(self) -> datetime:
        return self.bucket + WIDTHS[self.width]


@dataclass(frozen=True, slots=True)
class Replace:
    """The rows a successful pull owns: everything of (account, source, width) with a bucket in [start, end),
    narrowed to one scope when set. They are deleted and the pull's rows written in one transaction."""

    account: str
    source: str
    width: str
    start: datetime
    end: datetime
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class Balance:
    account: str
    provider: str
    currency: str
    at: datetime
    balance: Decimal


@dataclass
class PullResult:
    """What one source's pull produced. `errors` name the parts that failed; their old rows stay."""

    account: str
    provider: str
    rows: list[UsageRow] = field(default_factory=list)
    replaces: list[Replace] = field(default_factory=list)
    balances: list[Balance] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Figures the provider reports for its own current periods, e.g. OpenRouter usage_daily per key.
    period_totals: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (scope, period) -> USD
    spend_limit: Decimal | None = None

    def add(self, rows: list[UsageRow], replace: Replace) -> None:
        self.rows += rows
        self.replaces.append(replace)


def merge(rows: list[UsageRow]) -> list[UsageRow]:
    """Sum rows with the same primary key (two provider ids can fold into one scope)."""
    from dataclasses import replace as dc_replace

    out: dict[tuple[str, ...], UsageRow] = {}
    for r in rows:
        pk = r.pk()
        old = out.get(pk)
        if old is None:
            out[pk] = r
            continue
        cost = None if old.cost is None and r.cost is None else (old.cost or Decimal(0)) + (r.cost or Decimal(0))
        out[pk] = dc_replace(
            old,
            input_tokens=old.input_tokens + r.input_tokens,
            output_tokens=old.output_tokens + r.output_tokens,
            cached_tokens=old.cached_tokens + r.cached_tokens,
            requests=old.requests + r.requests,
            cost=cost,
        )
    return list(out.values())


def floor(at: datetime, width: str) -> datetime:
    at = at.astimezone(UTC)
    if width == "1h":
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil(at: datetime, width: str) -> datetime:
    f = floor(at, width)
    return f if f == at else f + WIDTHS[width]
