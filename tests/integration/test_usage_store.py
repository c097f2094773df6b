"""The usage store on SQLite and on the PostgreSQL of this machine: a pull's window is replaced, never
double counted; reads honour their bounds to the microsecond; buckets come back as UTC instants; and the
SQLite database stays small enough to embed (90 days of hourly rows for 1,000 keys is the design load)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from keywatch.store.repo import Store
from keywatch.usage.rows import PullResult, Replace, UsageRow
from keywatch.usage.store import UsageStore

DAY = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture
def usage(store):
    store.upgrade()
    return UsageStore(store.engine)


def hourly(scope: str, start: datetime, hours: int, tokens: int = 10, source: str = "usage") -> list[UsageRow]:
    return [UsageRow("org", "openai", source, scope, "1h", start + timedelta(hours=h), model="gpt-4o-mini",
                     input_tokens=tokens, output_tokens=1, requests=1) for h in range(hours)]


def pull(rows: list[UsageRow], start: datetime, end: datetime, scope: str | None = None) -> PullResult:
    return PullResult("org", "openai", rows=rows, replaces=[Replace("org", "usage", "1h", start, end, scope)])


def totals(store: UsageStore, since: datetime, until: datetime | None = None) -> dict[str, int]:
    return {a.group[2]: a.input_tokens for a in store.aggregate(since, until)}


def test_repulling_a_window_replaces_it_and_keeps_what_lies_outside(usage: UsageStore) -> None:
    usage.apply(pull(hourly("key:a", DAY, 48) + hourly("key:b", DAY, 48), DAY, DAY + timedelta(days=2)), DAY)
    # the second day is pulled again with new figures: day one stays, day two is replaced, not added to
    later = DAY + timedelta(days=1)
    usage.apply(pull(hourly("key:a", later, 24, tokens=100), later, later + timedelta(days=1)), later)
    # key:b's second day lay in the replaced window and is gone; its first day stays
    assert totals(usage, DAY) == {"key:a": 24 * 10 + 24 * 100, "key:b": 240}
    assert totals(usage, DAY, later) == {"key:a": 240, "key:b": 240}


def test_a_replace_narrowed_to_one_scope_leaves_the_other_scopes(usage: UsageStore) -> None:
    usage.apply(pull(hourly("key:a", DAY, 24) + hourly("key:b", DAY, 24), DAY, DAY + timedelta(days=1)), DAY)
    usage.apply(pull(hourly("key:a", DAY, 24, tokens=7), DAY, DAY + timedelta(days=1), scope="key:a"), DAY)
    assert totals(usage, DAY) == {"key:a": 24 * 7, "key:b": 240}


def test_bounds_are_exact_to_the_microsecond_in_any_timezone(usage: UsageStore) -> None:
    usage.write_rows(hourly("key:a", DAY, 3))  # buckets at 00:00, 01:00, 02:00 UTC
    one = DAY + timedelta(hours=1)
    assert totals(usage, one) == {"key:a": 20}  # a bucket exactly at `since` counts
    assert totals(usage, one + timedelta(microseconds=1)) == {"key:a": 10}
    assert totals(usage, DAY, one) == {"key:a": 10}  # a bucket exactly at `until` does not
    assert totals(usage, DAY, one + timedelta(microseconds=1)) == {"key:a": 20}
    paris = timezone(timedelta(hours=2))
    assert totals(usage, one.astimezone(paris)) == {"key:a": 20}


def test_buckets_come_back_as_the_utc_instants_written(usage: UsageStore) -> None:
    tokyo = timezone(timedelta(hours=9))
    usage.write_rows(hourly("key:a", DAY.astimezone(tokyo), 2))
    got = [a.group[0] for a in usage.aggregate(DAY, None, ("bucket",))]
    assert sorted(got) == [DAY, DAY + timedelta(hours=1)]
    assert all(b.utcoffset() == timedelta(0) for b in got)


def test_money_sums_exactly_across_fractional_cents(usage: UsageStore) -> None:
    usage.write_rows([UsageRow("org", "openai", "cost", "key:a", "1d", DAY + timedelta(days=d),
                               line_item="gpt-4o, input", cost=Decimal("0.000000123")) for d in range(3)]
                     + [UsageRow("org", "openai", "usage", "key:a", "1h", DAY)])
    (a,) = usage.aggregate(DAY)
    assert a.cost == Decimal("0.000000369") and a.has_cost


def test_a_day_of_hourly_usage_costs_little_disk_on_sqlite(tmp_path: Path) -> None:
    """The embedded default must hold 90 days x 1,000 keys of hourly rows in a few hundred MB."""
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    usage = UsageStore(store.engine)
    with store.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        empty = c.exec_driver_sql("PRAGMA page_count").scalar_one()
    rows = [r for k in range(200) for r in hourly(f"key:key-{k:04d}", DAY, 24)]
    usage.apply(pull(rows, DAY, DAY + timedelta(days=1)), DAY)
    with store.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = c.exec_driver_sql("PRAGMA page_count").scalar_one() - empty
        page_size = c.exec_driver_sql("PRAGMA page_size").scalar_one()
    store.dispose()
    per_row = pages * page_size / len(rows)
    assert per_row < 120, f"{per_row:.0f} bytes per hourly usage row"
