"""Budget periods (UTC day, Monday weeks, month ends), coverage, once-per-period thresholds with frozen time,
and the forecast on synthetic burns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from prometheus_client import CollectorRegistry

from keywatch.domain import Alert
from keywatch.runtime import EventLog, Runtime
from keywatch.settings.loader import build_inventory, parse
from keywatch.state import StateTracker
from keywatch.store.repo import Store
from keywatch.usage.budgets import covered_keys, crossed, period_bounds
from keywatch.usage.config import BudgetConfig, UsageSettings
from keywatch.usage.forecast import burn_rate, exhaustion
from keywatch.usage.rows import UsageRow
from keywatch.usage.service import UsageService
from keywatch.usage.store import UsageStore


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        ("daily", utc(2026, 3, 18, 23, 59, 59), utc(2026, 3, 18), utc(2026, 3, 19)),
        ("daily", utc(2026, 3, 19, 0, 0, 0), utc(2026, 3, 19), utc(2026, 3, 20)),
        ("weekly", utc(2026, 3, 22, 23, 59), utc(2026, 3, 16), utc(2026, 3, 23)),  # Sunday: still Monday 16th's
        ("weekly", utc(2026, 3, 23, 0, 0), utc(2026, 3, 23), utc(2026, 3, 30)),  # Monday starts a week
        ("monthly", utc(2026, 2, 28, 23, 59), utc(2026, 2, 1), utc(2026, 3, 1)),
        ("monthly", utc(2028, 2, 29, 12), utc(2028, 2, 1), utc(2028, 3, 1)),  # leap year
        ("monthly", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
    ],
)
def test_periods_are_utc_calendar_periods_with_monday_weeks(period, at, start, end) -> None:
    assert period_bounds(period, at) == (start, end)


def test_periods_use_utc_whatever_the_timezone_of_the_instant() -> None:
    from datetime import timezone

    tokyo = timezone(timedelta(hours=9))
    assert period_bounds("daily", datetime(2026, 3, 19, 8, 0, tzinfo=tokyo)) == (utc(2026, 3, 18), utc(2026, 3, 19))


def test_budget_needs_a_limit_and_one_selector() -> None:
    with pytest.raises(ValueError, match="set usd, tokens or both"):
        BudgetConfig(name="b", key="k")
    with pytest.raises(ValueError, match="choose one of key, labels"):
        BudgetConfig(name="b", key="k", account="a", usd="1")
    with pytest.raises(ValueError, match="say what the budget covers"):
        BudgetConfig(name="b", usd="1")
    with pytest.raises(ValueError, match="positive amount"):
        BudgetConfig(name="b", key="k", usd="-3")
    assert BudgetConfig(name="b", key="k", usd="1").thresholds == [50, 80, 95, 100]


def test_crossing_several_thresholds_at_once_announces_the_highest_and_records_all() -> None:
    assert crossed([50, 80, 95, 100], Decimal("0.96"), set()) == (95, ["50", "80", "95"])
    assert crossed([50, 80, 95, 100], Decimal("0.96"), {"50", "80", "95"}) == (None, [])
    assert crossed([50, 80, 95, 100], Decimal("1"), {"50", "80", "95"}) == (100, ["100"])
    assert crossed([50, 80, 95, 100], Decimal("0.49"), set()) == (None, [])


def test_forecast_within_5_percent_of_true_exhaustion_on_a_linear_burn() -> None:
    # $2.50 an hour, hourly buckets; limit $1000 per month; 10 days in, $600 used: true exhaustion 160 h later
    now = utc(2026, 3, 11, 0, 0)
    rate_per_hour = Decimal("2.5")
    buckets = [(now - timedelta(hours=h + 1), now - timedelta(hours=h), rate_per_hour) for h in range(240)]
    rate = burn_rate(buckets, now, timedelta(hours=24))
    at = exhaustion(Decimal(1000), Decimal(600), rate, now)
    truth = now + timedelta(hours=160)
    assert at is not None
    assert abs((at - truth).total_seconds()) <= 0.05 * (truth - now).total_seconds()


def test_forecast_from_daily_buckets_with_today_partly_elapsed() -> None:
    now = utc(2026, 3, 11, 6, 0)  # today's bucket holds 6 hours of spend
    per_hour = Decimal("1")
    buckets = [(utc(2026, 3, d), utc(2026, 3, d + 1), 24 * per_hour) for d in range(1, 11)]
    buckets.append((utc(2026, 3, 11), utc(2026, 3, 12), 6 * per_hour))
    rate = burn_rate(buckets, now, timedelta(hours=24))
    assert rate * 3600 == pytest.approx(Decimal(1), rel=Decimal("0.01"))


def test_no_forecast_when_nothing_burns() -> None:
    now = utc(2026, 3, 11)
    rate = burn_rate([(now - timedelta(hours=2), now - timedelta(hours=1), Decimal(0))], now, timedelta(hours=24))
    assert rate == 0
    assert exhaustion(Decimal(100), Decimal(10), rate, now) is None


CONFIG = """
[daemon]
database = "sqlite:///{db}"
[[keys]]
name = "search-1"
provider = "openai"
secret = "env:KW_UNIT_BUDGET_KEY"
labels = {{ team = "search" }}
[[keys]]
name = "ads-1"
provider = "openai"
secret = "env:KW_UNIT_BUDGET_KEY"
labels = {{ team = "ads" }}
[usage]
burn_window = "24h"
[[budgets]]
name = "search-weekly"
labels = {{ team = "search" }}
period = "weekly"
usd = "100"
[[budgets]]
name = "ads-daily"
key = "ads-1"
period = "daily"
tokens = 1000
"""


def runtime(inventory: Any) -> tuple[Runtime, list[Alert]]:
    """The runtime a capability gets, with nothing behind it but this inventory; alerts are captured."""
    alerts: list[Alert] = []

    async def capture(alert: Alert) -> None:
        alerts.append(alert)

    def no_adapter(provider: str) -> Any:
        raise AssertionError("no adapter in this test")

    rt = Runtime(tracker=StateTracker(), registry=CollectorRegistry(), current_store=lambda: None,
                 current_inventory=lambda: inventory, adapter=no_adapter, current_scheduler=lambda: None,
                 events=EventLog(lambda: None))
    rt.alerts.attach(capture)
    return rt, alerts


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> UsageService:
    monkeypatch.setenv("KW_UNIT_BUDGET_KEY", "sk-proj-" + "u" * 40)
    config = parse(CONFIG.format(db=tmp_path / "kw.db"))
    inventory = build_inventory(config, "test.toml")
    store = Store(config.daemon.database)
    store.upgrade()
    rt, alerts = runtime(inventory)
    service = UsageService(rt, UsageStore(store.engine))
    service.alerts = alerts  # type: ignore[attr-defined]
    return service


def spend(key: str, at: datetime, usd: str | None = None, tokens: int = 0) -> UsageRow:
    return UsageRow("org", "openai", "cost" if usd else "usage", f"key:{key}", "1h", at,
                    cost=Decimal(usd) if usd else None, input_tokens=tokens)


async def test_thresholds_announced_once_per_week_and_again_next_week(service: UsageService) -> None:
    daemon = service
    service.store.write_rows([spend("search-1", utc(2026, 3, 16, 9), "30"), spend("ads-1", utc(2026, 3, 16, 9),
                                                                                  "99")])
    with freeze_time("2026-03-16 10:00:00"):  # Monday
        await service.evaluate()
    assert [a.title for a in daemon.alerts if a.identity == "budget:search-weekly"] == []
    assert [a.title for a in daemon.alerts if a.identity == "budget_forecast:search-weekly"] == [
        "At this rate budget search-weekly runs out in 2 days"  # $30 in the last 24 h, $70 left
    ]
    service.store.write_rows([spend("search-1", utc(2026, 3, 18, 9), "25.50")])  # 55.50 of 100
    with freeze_time("2026-03-18 10:00:00"):
        await service.evaluate()
        await service.evaluate()
    titles = [a.title for a in daemon.alerts if a.identity == "budget:search-weekly"]
    assert titles == ["Budget search-weekly at 50% of its weekly limit ($55.50 of $100.00)"]
    service.store.write_rows([spend("search-1", utc(2026, 3, 22, 22), "44.50")])  # Sunday night: exactly 100
    with freeze_time("2026-03-22 23:59:59"):
        await service.evaluate()
    spent = [a for a in daemon.alerts if a.identity == "budget:search-weekly"][-1]
    assert spent.severity == "critical" and spent.firing
    assert service.rt.board.of("search-1") == {"budget_exhausted"}
    assert "budget_exhausted" not in service.rt.board.of("ads-1")
    before = len(daemon.alerts)
    with freeze_time("2026-03-23 00:00:01"):  # Monday: a new week
        await service.evaluate()
    assert service.rt.board.of("search-1") == set()
    resolved = [a.identity for a in daemon.alerts[before:] if not a.firing]
    assert "budget:search-weekly" in resolved
    service.store.write_rows([spend("search-1", utc(2026, 3, 23, 5), "51")])
    with freeze_time("2026-03-23 06:00:00"):
        await service.evaluate()
    assert [a.title for a in daemon.alerts if a.firing and a.identity == "budget:search-weekly"][-1] \
        == "Budget search-weekly at 50% of its weekly limit ($51.00 of $100.00)"


async def test_marks_survive_a_restart_so_nothing_is_announced_twice(service: UsageService) -> None:
    service.store.write_rows([spend("search-1", utc(2026, 3, 18, 9), "81")])
    with freeze_time("2026-03-18 10:00:00"):
        await service.evaluate()
    assert len(service.alerts) >= 1
    rt, alerts = runtime(service.rt.inventory)
    again = UsageService(rt, service.store)
    again.alerts = alerts  # type: ignore[attr-defined]
    with freeze_time("2026-03-18 11:00:00"):
        await again.evaluate()
    assert [a for a in again.alerts if a.identity == "budget:search-weekly"] == []


async def test_daily_token_budget_resets_at_utc_midnight(service: UsageService) -> None:
    service.store.write_rows([spend("ads-1", utc(2026, 3, 18, 23), tokens=1000)])
    with freeze_time("2026-03-18 23:59:00"):
        await service.evaluate()
    assert service.rt.board.of("ads-1") == {"budget_exhausted"}
    with freeze_time("2026-03-19 00:00:00"):
        statuses = await service.evaluate()
    assert service.rt.board.of("ads-1") == set()
    assert {s.name: s.ratio for s in statuses}["ads-daily"] == 0


async def test_forecast_warns_when_the_budget_runs_out_before_the_period_ends(service: UsageService) -> None:
    # $2 an hour since Sunday 00:00; limit $100 a week starting Monday; at Monday 06:00 $12 used this week:
    # the remaining $88 last 44 hours, until Wednesday 02:00
    start = utc(2026, 3, 15, 0)
    service.store.write_rows([spend("search-1", start + timedelta(hours=h), "2") for h in range(30)])
    with freeze_time("2026-03-16 06:00:00"):
        statuses = await service.evaluate()
    st = {s.name: s for s in statuses}["search-weekly"]
    assert st.used.usd == Decimal(12)
    assert st.exhaustion_at is not None
    assert abs((st.exhaustion_at - utc(2026, 3, 18, 2)).total_seconds()) <= 0.05 * 44 * 3600
    warned = [a for a in service.alerts if a.identity == "budget_forecast:search-weekly"]
    assert len(warned) == 1 and warned[0].title.startswith("At this rate budget search-weekly runs out in")


async def test_no_forecast_for_a_budget_that_does_not_burn(service: UsageService) -> None:
    service.store.write_rows([spend("search-1", utc(2026, 3, 16, 1), "60")])
    with freeze_time("2026-03-18 12:00:00"):  # nothing spent in the last 24 h
        statuses = await service.evaluate()
    assert {s.name: s for s in statuses}["search-weekly"].exhaustion_at is None
    assert [a for a in service.alerts if a.identity.startswith("budget_forecast:")] == []


def test_label_budget_covers_the_labelled_keys_only(service: UsageService) -> None:
    b = BudgetConfig(name="b", labels={"team": "search"}, usd="1")
    assert covered_keys(b, service.rt.inventory.keys) == ["search-1"]


def test_usage_settings_refuse_a_lookback_shorter_than_an_hour() -> None:
    with pytest.raises(ValueError, match="lookback"):
        UsageSettings(lookback="10m")


async def test_forecast_metric_is_absent_when_nothing_burns_and_present_when_it_does(service: UsageService) -> None:
    from prometheus_client import CollectorRegistry

    from keywatch.usage.metrics import UsageCollector

    registry = CollectorRegistry()
    registry.register(UsageCollector(lambda: service.snapshot))
    service.store.write_rows([spend("search-1", utc(2026, 3, 16, 1), "60")])
    with freeze_time("2026-03-18 12:00:00"):
        await service.evaluate()
    assert registry.get_sample_value("keywatch_budget_exhaustion_forecast_seconds", {"budget": "search-weekly"}) \
        is None
    assert registry.get_sample_value("keywatch_budget_used_ratio", {"budget": "search-weekly"}) == 0.6
    service.store.write_rows([spend("search-1", utc(2026, 3, 18, h), "1") for h in range(12)])
    with freeze_time("2026-03-18 12:00:00"):
        await service.evaluate()
    # $12 in the last 24 h, $28 left: 56 hours
    assert registry.get_sample_value("keywatch_budget_exhaustion_forecast_seconds", {"budget": "search-weekly"}) \
        == pytest.approx(56 * 3600, rel=0.05)
