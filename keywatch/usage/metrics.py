"""Usage metrics, built at scrape time from the service's in-memory snapshot (never the database)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from keywatch.usage.budgets import BudgetStatus


@dataclass
class SourceView:
    provider: str
    last_success_at: datetime | None
    stale: bool


@dataclass
class UsageSnapshot:
    at: datetime | None = None
    key_spend: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)  # (key, provider, period)
    key_tokens: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (key, provider, direction)
    budgets: list[BudgetStatus] = field(default_factory=list)
    balances: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)  # (account, provider, currency)
    sources: dict[str, SourceView] = field(default_factory=dict)


class UsageCollector(Collector):
    def __init__(self, snapshot: Callable[[], UsageSnapshot]) -> None:
        self.snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        spend = GaugeMetricFamily("keywatch_key_spend_usd", "USD spent by the key in the current UTC day, week or "
                                  "month (as the provider reports it)", labels=["key", "provider", "period"])
        for (k, p, period), v in sorted(snap.key_spend.items()):
            spend.add_metric([k, p, period], float(v))
        # A gauge: the month's figure is rebuilt from rows the provider may still revise, so it can go down.
        tokens = GaugeMetricFamily("keywatch_key_tokens", "Tokens used by the key in the current UTC month, as the "
                                   "provider reports it (resets at month start; revisions can lower it)",
                                   labels=["key", "provider", "direction"])
        for (k, p, d), n in sorted(snap.key_tokens.items()):
            tokens.add_metric([k, p, d], n)
        limit = GaugeMetricFamily("keywatch_budget_limit_usd", "The budget's USD limit per period", labels=["budget"])
        ratio = GaugeMetricFamily("keywatch_budget_used_ratio", "Share of the budget used this period (1 = spent; "
                                  "the larger of the USD and token shares)", labels=["budget"])
        fc = GaugeMetricFamily("keywatch_budget_exhaustion_forecast_seconds", "Seconds until the budget runs out at "
                               "the trailing burn rate; absent when that is not before the period ends",
                               labels=["budget"])
        for b in snap.budgets:
            if b.limit_usd is not None:
                limit.add_metric([b.name], float(b.limit_usd))
            ratio.add_metric([b.name], float(b.ratio))
            if b.exhaustion_at is not None and snap.at is not None:
                fc.add_metric([b.name], max(0.0, (b.exhaustion_at - snap.at).total_seconds()))
        bal = GaugeMetricFamily("keywatch_account_balance", "Prepaid balance last seen (DeepSeek, Moonshot)",
                                labels=["account", "provider", "currency"])
        for (a, p, c), v in sorted(snap.balances.items()):
            bal.add_metric([a, p, c], float(v))
        last = GaugeMetricFamily("keywatch_usage_last_success_timestamp_seconds",
                                 "Unix time of the account's last successful usage pull", labels=["account"])
        stale = GaugeMetricFamily("keywatch_usage_stale", "1 when the account's last usage pull failed: its figures "
                                  "are the last good ones", labels=["account"])
        for name, s in sorted(snap.sources.items()):
            if s.last_success_at is not None:
                last.add_metric([name], s.last_success_at.timestamp())
            stale.add_metric([name], 1 if s.stale else 0)
        return [spend, tokens, limit, ratio, fc, bal, last, stale]
