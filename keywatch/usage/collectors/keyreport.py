"""Providers whose keys report on themselves: OpenRouter (per-key spend from GET /key) and the balance
providers, DeepSeek and Moonshot (spend = the balance's decrease over time).

OpenRouter gives running totals for the current UTC day, week and month; today's total becomes today's
daily bucket (replaced at every pull) and the week and month totals are kept as the provider's own figures
for budgets. A balance that goes up is a top-up: it is not counted as negative spend.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from keywatch.domain import Health
from keywatch.usage.collectors.base import PullContext, Source
from keywatch.usage.money import amount
from keywatch.usage.rows import Balance, PullResult, Replace, UsageRow, floor


async def pull_spend(ctx: PullContext, source: Source) -> PullResult:
    """Keys that report their own spend with their probe (OpenRouter's GET /key)."""
    result = PullResult(source.name, source.provider)
    adapter = ctx.adapter(source.provider)
    day = floor(ctx.now, "1d")
    for key in source.keys:
        probe = await adapter.probe(key)
        d = probe.details
        if probe.health not in (Health.HEALTHY, Health.QUOTA_EXHAUSTED) or d.get("usage_daily") is None:
            result.errors.append(f"key {key.name}: {probe.error_code or probe.health}: {probe.error_message or ''}"
                                 .strip()[:300])
            continue
        scope = f"key:{key.name}"
        try:
            daily = amount(d["usage_daily"], f"key {key.name} usage_daily")
            for period, field in (("daily", "usage_daily"), ("weekly", "usage_weekly"), ("monthly", "usage_monthly")):
                if d.get(field) is not None:
                    result.period_totals[(scope, period)] = amount(d[field], f"key {key.name} {field}")
            if d.get("limit") is not None:
                result.period_totals[(scope, "limit")] = amount(d["limit"], f"key {key.name} limit")
        except ValueError as exc:
            result.errors.append(str(exc))
            continue
        result.add(
            [UsageRow(source.name, source.provider, "key_usage", scope, "1d", day, cost=daily)],
            Replace(source.name, "key_usage", "1d", day, day + timedelta(days=1), scope=scope),
        )
    return result


async def pull_balance(ctx: PullContext, source: Source, store_history: list[Balance]) -> PullResult:
    """One balance per source (keys of one account share it); spend per day from the decreases seen since
    the window start, `store_history` being the balances stored before (oldest first)."""
    result = PullResult(source.name, source.provider)
    adapter = ctx.adapter(source.provider)
    seen: list[Balance] = []
    for key in source.keys:
        probe = await adapter.probe(key)
        d = probe.details
        if d.get("balance") is None:
            result.errors.append(f"key {key.name}: {probe.error_code or probe.health}: {probe.error_message or ''}"
                                 .strip()[:300])
            continue
        balances = d.get("balances") or [{"currency": d.get("currency", "USD"), "total_balance": d["balance"]}]
        try:
            seen = [Balance(source.name, source.provider, str(b["currency"]).upper(), ctx.now,
                            amount(b["total_balance"], f"key {key.name} balance")) for b in balances]
        except ValueError as exc:
            result.errors.append(str(exc))
            continue
        break
    if not seen:
        return result
    result.balances = seen
    scope = f"account:{source.name}"
    start = floor(ctx.start, "1d")
    end = floor(ctx.now, "1d") + timedelta(days=1)
    history = sorted(store_history + seen, key=lambda b: (b.currency, b.at))
    spend: dict[tuple[str, datetime], Decimal] = {}
    for prev, cur in itertools.pairwise(history):
        if prev.currency != cur.currency or cur.at < start:
            continue
        drop = prev.balance - cur.balance
        if drop > 0:  # an increase is a top-up, not negative spend
            k = (cur.currency, floor(cur.at, "1d"))
            spend[k] = spend.get(k, Decimal(0)) + drop
    rows = [UsageRow(source.name, source.provider, "balance", scope, "1d", day, currency=cur, cost=v)
            for (cur, day), v in spend.items()]
    result.add(rows, Replace(source.name, "balance", "1d", start, end))
    return result


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
