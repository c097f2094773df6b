"""When a budget runs out at the current burn rate. The rate is the spend of a trailing window; each bucket's
amount is taken as spread evenly over the part of it that has elapsed (today's daily bucket covers midnight
to now), so hourly and daily figures give the same rate for a steady burn."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal


def burn_rate(buckets: Iterable[tuple[datetime, datetime, Decimal]], now: datetime, window: timedelta) -> Decimal:
    """Amount per second over [now - window, now) from (bucket start, bucket end, amount)."""
    lo = now - window
    total = Decimal(0)
    for start, end, value in buckets:
        end = min(end, now)
        if end <= start or end <= lo or start >= now or not value:
            continue
        span = (end - start).total_seconds()
        overlap = (end - max(start, lo)).total_seconds()
        total += value * Decimal(overlap) / Decimal(span)
    return total / Decimal(window.total_seconds())


def exhaustion(limit: Decimal, used: Decimal, rate: Decimal, now: datetime) -> datetime | None:
    """When `used` reaches `limit` at `rate` per second; None when nothing is burning. Already spent: now."""
    if used >= limit:
        return now
    if rate <= 0:
        return None
    seconds = (limit - used) / rate
    if seconds > Decimal(10 * 365 * 86400):
        return None
    return now + timedelta(seconds=float(seconds))


def human(delta: timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s >= 2 * 86400:
        return f"{s // 86400} days"
    if s >= 2 * 3600:
        return f"{s // 3600} hours"
    if s >= 120:
        return f"{s // 60} minutes"
    return f"{s} seconds"
