"""The usage anomaly detector on synthetic series (the simulator's seasonal generator): a 20x spike is
flagged in the hour it happens, 30 days of normal seasonal traffic judged hour by hour raise nothing, and a
key with less than a day of history is never judged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keywatch.sim.routes.usage_openai import seasonal_usage
from keywatch.usage import anomaly

START = datetime(2026, 2, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Agg:
    """What the usage store's aggregate gives, grouped by anomaly.GROUP_BY."""

    def __init__(self, key: str, bucket: datetime, requests: int, tokens: int) -> None:
        self.group = (f"key:{key}", "USD", "1h", bucket)
        self.requests, self.tokens, self.cost, self.has_cost = requests, tokens, 0, False


def aggs(key: str, records: list[dict]) -> list[Agg]:
    return [
        Agg(key, datetime.fromtimestamp(r["at"], UTC), r["num_model_requests"], r["input_tokens"] + r["output_tokens"])
        for r in records
    ]


def series(key: str, start: datetime, end: datetime, **kw: object) -> list[Agg]:
    return aggs(key, seasonal_usage(start, end, api_key_id=key, project_id="p", **kw))


def flags(rows: list[Agg], now: datetime, threshold: float = 6.0, keys: tuple[str, ...] = ("k",)) -> list:
    s, first = anomaly.series_from([r for r in rows if r.group[3] <= now], keys)
    return anomaly.detect(s, first, now, threshold)


def test_thirty_days_of_seasonal_traffic_raise_no_flag_hour_by_hour() -> None:
    end = START + timedelta(days=31)
    rows = series("k", START, end, seed=3) + series("quiet", START, end, requests_per_hour=3, seed=4)
    s, first = anomaly.series_from(rows, ("k", "quiet"))  # each judgement reads only the past and its hour
    judged = 0
    now = START + timedelta(days=1)
    while now < end:
        assert anomaly.detect(s, first, now, 6.0) == [], now
        now += HOUR
        judged += 1
    assert judged == 30 * 24


@pytest.mark.parametrize("hour", [2, 14, 21])
def test_a_20x_spike_is_flagged_in_its_hour(hour: int) -> None:
    spike = START + timedelta(days=15, hours=hour)
    rows = series("k", START, spike + 4 * HOUR, spike_at=spike, seed=5)
    before = flags(rows, spike - HOUR)
    assert before == []
    found = flags(rows, spike + timedelta(minutes=59))
    assert {(a.metric, a.hour) for a in found} == {("requests", spike), ("tokens", spike)}
    assert all(a.ratio > 10 and a.key == "k" for a in found)
    assert "requests" in found[0].text() and "UTC" in found[0].text()
    # the spike leaves the judged hours three hours later, and the key is normal again
    assert flags(rows, spike + 3 * HOUR) == []


def test_a_spike_at_night_is_measured_against_the_night() -> None:
    """5x the night's usual traffic is still under the day's: a flat daily baseline would miss it."""
    spike = START + timedelta(days=10, hours=2)
    rows = series("k", START, spike + HOUR, spike_at=spike, spike_factor=5, seed=6)
    day_level = max(r.requests for r in rows if r.group[3] < spike)
    night = next(r for r in rows if r.group[3] == spike)
    assert night.requests < day_level
    assert {a.metric for a in flags(rows, spike)} == {"requests", "tokens"}


def test_less_than_a_day_of_history_is_never_judged() -> None:
    first = START + timedelta(hours=5)
    spike = first + timedelta(hours=20)
    rows = series("k", first, spike + HOUR, spike_at=spike, spike_factor=50)
    assert flags(rows, spike) == []
    rows = series("k", first, first + timedelta(days=2), spike_at=first + timedelta(hours=30), spike_factor=50)
    assert [a.hour for a in flags(rows, first + timedelta(hours=30))] == [first + timedelta(hours=30)] * 2


def test_sensitivity_is_the_threshold() -> None:
    spike = START + timedelta(days=8, hours=12)
    rows = series("k", START, spike + HOUR, spike_at=spike, spike_factor=3, seed=8)
    assert flags(rows, spike, threshold=6) != []  # 3x at midday: well past 6 MADs
    assert flags(rows, spike, threshold=40) == []  # less sensitive
    assert flags(rows, spike, threshold=0) == []  # off


def test_an_anomaly_alone_keeps_the_key_in_its_pools() -> None:
    """A warning: only a policy naming usage_anomaly takes the key out; compromised and budget still do."""
    from keywatch.domain import Health, KeyState
    from keywatch.pools.config import PoolConfig
    from keywatch.pools.membership import eligible

    pool = PoolConfig(name="p", file={"path": "/tmp/p.txt"})
    st = KeyState("k", "openai", "sha256:0", "sk-...0000", health=Health.HEALTHY)
    assert eligible(pool, st, frozenset({"usage_anomaly"}))
    assert not eligible(pool, st, frozenset({"usage_anomaly", "compromised"}))
    assert not eligible(pool, st, frozenset({"budget_exhausted"}))


def test_spend_per_hour_is_judged_too() -> None:
    class Cost(Agg):
        def __init__(self, bucket: datetime, usd: float) -> None:
            self.group = ("key:k", "USD", "1h", bucket)
            self.requests, self.tokens, self.cost, self.has_cost = 0, 0, usd, True

    spike = START + timedelta(days=9, hours=13)
    rows = [Cost(START + i * HOUR, 2.0 + (i % 5) * 0.1) for i in range(9 * 24 + 14)]
    rows[-1] = Cost(spike, 40.0)
    found = flags(rows, spike)
    assert [(a.metric, a.hour) for a in found] == [("spend", spike)]
    assert "40 USD" in found[0].text()
