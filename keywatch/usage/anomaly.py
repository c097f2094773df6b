"""Usage far above a key's own baseline: a leaked key is usually found by someone who uses it, a lot.

Per key, each hour's requests, tokens and spend (USD) are compared with the same hour of the key's past
days (daily seasonality: 3 a.m. against 3 a.m.), robustly: the median of those hours, and their median
absolute deviation (MAD) as the spread. An hour is anomalous when its robust score, (value - median) /
spread, is above the threshold (`[usage] anomaly_threshold`; lower flags more), the value is at least
MIN_RATIO times the median (SHORT_RATIO while the key has fewer than SHORT_HISTORY past days), and the
excess is at least the key's mean hourly figure (one more typical hour's worth of use). The spread is
never taken below SPREAD_FLOOR of the median, nor LEVEL_FLOOR of the key's mean hourly figure, nor one
unit (a cent for spend): a key idle every night does not alarm on its first request after midnight. A key
with less than a day of history is never judged.

An anomaly is a warning alert (`usage_anomaly:<key>`) and the `usage_anomaly` signal on the runtime's board;
it becomes containment only where a policy says so (`when = { signals = ["usage_anomaly"] }`). The
functions here are pure; `AnomalyWatch` turns their findings into alerts and the signal after each usage pull.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from keywatch.domain import Alert, Event, Severity, Signal

METRICS = ("requests", "tokens", "spend")
BASELINE_DAYS = 14  # past days whose same hour make the baseline
JUDGED_HOURS = 3  # the hours judged at each pull: the current one (partial) and the two before it
MAD_SCALE = 1.4826  # makes the MAD comparable to a standard deviation for normal noise
SPREAD_FLOOR = 0.1  # of the median of the same hour
LEVEL_FLOOR = 0.15  # of the key's mean hourly figure
MIN_RATIO = 2.0
SHORT_HISTORY = 7  # with fewer past days than this (a weekend against a Monday), an anomaly needs SHORT_RATIO
SHORT_RATIO = 5.0
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
GROUP_BY = ("scope", "currency", "width", "bucket")  # what the usage store's aggregate is asked for

Series = Mapping[datetime, float]


@dataclass(frozen=True)
class Anomaly:
    key: str
    metric: str
    hour: datetime
    value: float
    baseline: float  # median of the same hour over the past days
    spread: float
    score: float

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline > 0 else math.inf

    def text(self) -> str:
        times = f"{self.ratio:.0f}x" if math.isfinite(self.ratio) else "from nothing to"
        unit = " USD" if self.metric == "spend" else ""
        return (
            f"{self.metric} {_num(self.value)}{unit} in the hour from {self.hour:%Y-%m-%d %H:00} UTC: {times} its "
            f"usual {_num(self.baseline)}{unit} at this hour (score {self.score:.1f})"
        )


def _num(x: float) -> str:
    return f"{x:,.2f}" if x != int(x) else f"{int(x):,}"


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def baseline(series: Series, hour: datetime, first_seen: datetime, days: int = BASELINE_DAYS) -> list[float]:
    """The same hour on each of the past `days` days the key existed (an hour without a row is 0)."""
    out = []
    for k in range(1, days + 1):
        h = hour - k * DAY
        if h < hour_of(first_seen):
            break
        out.append(series.get(h, 0.0))
    return out


def level(series: Series, hour: datetime, first_seen: datetime, days: int = BASELINE_DAYS) -> float:
    """The key's mean hourly figure over the baseline window before `hour`."""
    start = max(hour - days * DAY, hour_of(first_seen))
    hours = int((hour - start) / HOUR)
    if hours <= 0:
        return 0.0
    return sum(v for h, v in series.items() if start <= h < hour) / hours


def judge(
    key: str,
    metric: str,
    series: Series,
    hour: datetime,
    first_seen: datetime | None,
    threshold: float,
    days: int = BASELINE_DAYS,
) -> Anomaly | None:
    """The anomaly of `hour`, or None (normal, or less than a day of history)."""
    if first_seen is None or hour - hour_of(first_seen) < DAY or threshold <= 0:
        return None
    past = baseline(series, hour, first_seen, days)
    if not past:
        return None
    value = series.get(hour, 0.0)
    med = median(past)
    mad = median(abs(x - med) for x in past)
    unit = 0.01 if metric == "spend" else 1.0
    typical = level(series, hour, first_seen, days)
    spread = max(MAD_SCALE * mad, SPREAD_FLOOR * med, LEVEL_FLOOR * typical, unit)
    score = (value - med) / spread
    ratio = MIN_RATIO if len(past) >= SHORT_HISTORY else SHORT_RATIO
    if score > threshold and value >= ratio * med and value - med >= typical:
        return Anomaly(key, metric, hour, value, med, spread, score)
    return None


def detect(
    series: Mapping[str, Mapping[str, Series]],
    first_seen: Mapping[str, datetime],
    now: datetime,
    threshold: float,
    hours: int = JUDGED_HOURS,
    days: int = BASELINE_DAYS,
) -> list[Anomaly]:
    """Every anomaly of the last `hours` hours up to `now`, for every key and metric in `series`
    (key -> metric -> hour -> figure); the worst one per key and metric."""
    out = []
    judged = [hour_of(now) - i * HOUR for i in range(hours)]
    for key in sorted(series):
        for metric in METRICS:
            s = series[key].get(metric)
            if not s:
                continue
            found = [a for h in judged if (a := judge(key, metric, s, h, first_seen.get(key), threshold, days))]
            if found:
                out.append(max(found, key=lambda a: a.score))
    return out


def series_from(
    aggregates: Iterable[Any], keys: Iterable[str]
) -> tuple[dict[str, dict[str, dict[datetime, float]]], dict[str, datetime]]:
    """Hourly series per managed key from the usage store's aggregates grouped by GROUP_BY (scope
    `key:<name>`, hourly buckets; spend in USD only), and the first hour each key has a row."""
    wanted = set(keys)
    series: dict[str, dict[str, dict[datetime, float]]] = {}
    first: dict[str, datetime] = {}
    for a in aggregates:
        scope, currency, width, bucket = a.group
        name = scope[4:] if scope.startswith("key:") else None
        if name not in wanted or width != "1h":
            continue
        assert name is not None
        bucket = hour_of(bucket)
        first[name] = min(first.get(name, bucket), bucket)
        per = series.setdefault(name, {m: {} for m in METRICS})
        per["requests"][bucket] = per["requests"].get(bucket, 0.0) + a.requests
        per["tokens"][bucket] = per["tokens"].get(bucket, 0.0) + a.tokens
        if a.has_cost and currency == "USD":
            per["spend"][bucket] = per["spend"].get(bucket, 0.0) + float(a.cost)
    for per in series.values():
        if not per["spend"]:
            del per["spend"]
    return series, first


class AnomalyWatch:
    """The anomalies of the last pull as alerts and the `usage_anomaly` signal: raised when a key turns
    anomalous, resolved when its judged hours are normal again."""

    def __init__(self) -> None:
        self.firing: dict[str, list[Anomaly]] = {}
        self._restored = False

    async def update(self, rt: Any, found: list[Anomaly], now: datetime) -> None:
        if not self._restored:  # alerts still firing from before a restart are resolved here too
            self._restored = True
            for a in rt.alerts.firing():
                if a.identity.startswith("usage_anomaly:"):
                    self.firing.setdefault(a.identity.removeprefix("usage_anomaly:"), [])
        by_key: dict[str, list[Anomaly]] = {}
        for a in found:
            by_key.setdefault(a.key, []).append(a)
        providers = {k.name: k.provider for k in rt.inventory.keys}
        for key, items in by_key.items():
            text = "; ".join(a.text() for a in items)
            if key not in self.firing:
                rt.events.record(
                    Event(now, "usage_anomaly", key, "keywatch", text, {"metrics": [a.metric for a in items]})
                )
            await rt.emit_alert(
                Alert(
                    identity=f"usage_anomaly:{key}",
                    severity=Severity.WARNING,
                    firing=True,
                    title=f"{key}: usage far above its own baseline",
                    summary=text,
                    at=now,
                    key=key,
                    provider=providers.get(key),
                    fields={
                        "metrics": ", ".join(a.metric for a in items),
                        "ratio": ", ".join(f"{a.ratio:.1f}" for a in items),
                        "action": "alerted only (a policy on the usage_anomaly signal decides more)",
                    },
                )
            )
        for key in sorted(set(self.firing) - set(by_key)):
            await rt.emit_alert(
                Alert(
                    identity=f"usage_anomaly:{key}",
                    severity=Severity.WARNING,
                    firing=False,
                    title=f"{key}: usage back within its baseline",
                    summary="",
                    at=now,
                    key=key,
                    provider=providers.get(key),
                )
            )
        self.firing = by_key
        rt.board.set(Signal.USAGE_ANOMALY, by_key)
