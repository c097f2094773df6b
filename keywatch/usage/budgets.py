"""Budgets: which keys and scopes a budget covers, how much of its period is used, and which thresholds are
newly crossed. Pure functions over aggregates, so every rule is testable without a clock or a database."""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from keywatch.domain import ManagedKey
from keywatch.usage.config import BudgetConfig
from keywatch.usage.store import Aggregate

PERIOD_NAMES = {"daily": "day", "weekly": "week", "monthly": "month"}


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the UTC calendar period holding `at`; weeks start on Monday."""
    at = at.astimezone(UTC)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day, day + timedelta(days=1)
    if period == "weekly":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "monthly":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + timedelta(days=days)
    raise ValueError(f"unknown period {period!r}")


def covered_keys(budget: BudgetConfig, keys: Iterable[ManagedKey]) -> list[str]:
    """The managed keys a budget is about: they carry `budget_exhausted` when it is spent."""
    out = []
    for k in keys:
        if budget.provider and k.provider != budget.provider:
            continue
        if budget.key is not None and k.name != budget.key:
            continue
        if budget.labels is not None and any(k.labels.get(n) != v for n, v in budget.labels.items()):
            continue
        if budget.account is not None and k.account != budget.account:
            continue
        if budget.scope is not None:
            continue  # a project or workspace budget names no key of its own
        out.append(k.name)
    return out


def matches(budget: BudgetConfig, account: str, provider: str, scope: str, keys: set[str]) -> bool:
    """Whether rows of (account, provider, scope) count toward the budget."""
    if budget.provider and provider != budget.provider:
        return False
    if budget.account is not None:
        return account == budget.account
    if budget.scope is not None:
        return scope == budget.scope
    if budget.key is not None or budget.labels is not None:
        return scope.startswith("key:") and scope[4:] in keys
    return True  # provider-wide


@dataclass
class Usage:
    usd: Decimal = Decimal(0)
    tokens: int = 0


def used(budget: BudgetConfig, aggregates: Iterable[Aggregate], keys: set[str],
         provider_totals: dict[tuple[str, str], Decimal] | None = None) -> Usage:
    """What the budget's rows add up to. Aggregates are grouped by (account, provider, scope, currency);
    only USD counts toward a USD limit. For scopes whose provider reports its own period total (OpenRouter),
    the larger of the stored sum and the provider's total counts: the provider's sees spend before keywatch ran."""
    u = Usage()
    per_scope: dict[str, Decimal] = {}
    for a in aggregates:
        account, provider, scope, currency = a.group
        if not matches(budget, account, provider, scope, keys):
            continue
        u.tokens += a.tokens
        if currency == "USD" and a.has_cost:
            u.usd += a.cost
            per_scope[scope] = per_scope.get(scope, Decimal(0)) + a.cost
    for (scope, period), total in (provider_totals or {}).items():
        if period != budget.period or not scope.startswith("key:") or scope[4:] not in keys:
            continue
        if budget.scope is not None or budget.account is not None:
            continue
        stored = per_scope.get(scope, Decimal(0))
        if total > stored:
            u.usd += total - stored
    return u


def ratio(budget: BudgetConfig, u: Usage) -> Decimal:
    """The larger of the USD and token ratios (1 = the limit)."""
    parts = []
    if budget.usd is not None:
        parts.append(u.usd / budget.usd)
    if budget.tokens is not None:
        parts.append(Decimal(u.tokens) / Decimal(budget.tokens))
    return max(parts) if parts else Decimal(0)


def crossed(thresholds: list[int], r: Decimal, announced: set[str]) -> tuple[int | None, list[str]]:
    """(the highest newly crossed threshold to announce, every mark to record). Thresholds jumped over in one
    step are recorded without an announcement of their own: one alert says the most important thing."""
    hit = [t for t in thresholds if r * 100 >= t]
    new = [t for t in hit if str(t) not in announced]
    if not new:
        return None, []
    return max(new), [str(t) for t in new]


@dataclass
class BudgetStatus:
    name: str
    period: str
    period_start: datetime
    period_end: datetime
    limit_usd: Decimal | None
    limit_tokens: int | None
    used: Usage
    ratio: Decimal
    keys: list[str] = field(default_factory=list)
    exhaustion_at: datetime | None = None  # only when foreseen before the period ends
    burn_usd_per_s: Decimal = Decimal(0)
    burn_tokens_per_s: Decimal = Decimal(0)

    @property
    def exhausted(self) -> bool:
        return self.ratio >= 1
