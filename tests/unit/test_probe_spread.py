"""`probe.spread`: a cycle's probes start spread over part of the interval (a steady trickle, not one burst
at the provider), each key at a stable place of its own, and the cycle still ends with a full pass."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from keywatch.domain import Health, ManagedKey, ProbeResult, Secret
from keywatch.engine.prober import Prober, start_offsets


class Recording:
    """An adapter that answers at once and notes when each key was probed (loop time)."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def get(self, provider: str) -> Recording:
        return self

    async def probe(self, key: ManagedKey) -> ProbeResult:
        self.at[key.name] = asyncio.get_running_loop().time()
        return ProbeResult(key=key.name, provider=key.provider, health=Health.HEALTHY, checked_at=datetime.now(UTC))


def _keys(n: int) -> list[ManagedKey]:
    return [ManagedKey(f"key-{i:03d}", "openai", Secret(f"sk-proj-{i:040d}"), "env:X") for i in range(n)]


def test_each_key_keeps_its_place_in_the_window_give_or_take_a_second() -> None:
    names = [k.name for k in _keys(500)]
    first, second = start_offsets(names, 60.0), start_offsets(names, 60.0)
    assert all(0 <= o <= 60 for o in first + second)
    assert max(abs(a - b) for a, b in zip(first, second, strict=True)) <= 1.0  # the jitter is under a second
    assert max(first) - min(first) > 50  # spread over the window, not bunched at its start
    per_ten_seconds = [sum(1 for o in first if s <= o < s + 10) for s in range(0, 60, 10)]
    assert min(per_ten_seconds) > 500 / 6 / 2  # no stretch of the window is left empty


def test_a_spread_cycle_probes_every_key_once_and_not_in_one_burst() -> None:
    adapter = Recording()
    prober = Prober(adapter, concurrency=100, timeout=5)  # type: ignore[arg-type]
    keys = _keys(40)

    async def go(spread: float) -> tuple[list[ProbeResult], float]:
        adapter.at.clear()
        t0 = asyncio.get_running_loop().time()
        results = await prober.run(keys, spread=spread)
        return results, max(adapter.at.values()) - t0

    burst_results, burst_last = asyncio.run(go(0.0))
    spread_results, spread_last = asyncio.run(go(0.6))
    assert sorted(r.key for r in spread_results) == sorted(k.name for k in keys)  # a full pass
    assert len(burst_results) == len(keys)
    assert spread_last > 0.3 > burst_last  # the last probe waited for its place; without spread none does
