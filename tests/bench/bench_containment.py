"""Benchmark: report-to-deactivation of leak containment. A real daemon (default policies, a file pool, 103
OpenRouter keys of which 3 are already disabled as dead) against the simulator, which also plays GitHub.
Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_containment.py [--reports 100]

Each report is a signed GitHub `secret_scanning_alert` webhook for another managed key: the daemon verifies
it, records it, fetches the alert's secret from the GitHub API, matches it and deactivates the key at the
provider. Figures, p50/p99/max in milliseconds:
- one at a time: from sending the webhook to the simulator having the key disabled (target p99 <= 1 s);
- a burst of all reports at once, same measure;
- keywatch_containment_seconds as the daemon itself records it (arrival to provider deactivation);
- the floor, in the same run: the bare provider call (a fresh OpenRouter adapter finding the key by its
  label and disabling it, against the same simulator), and the ratio of the one-at-a-time p50 to it.

Where a burst's time goes (the simulator runs in this process, on the same event loop): receiving and
recording the webhooks, fetching the alerts (a pool of leaks.service.GITHUB_CONNECTIONS), the action's start
line written, then the provider call (the simulator lists every key to find one by its label).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
import structlog

from keywatch.sim.routes import github as gh
from tests.integration.leaks_harness import HOOK_SECRET, LeakHarness, start, stop


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def line(name: str, ms: list[float]) -> str:
    return f"{name:<34} n={len(ms):<4} p50={pct(ms, 50):7.1f} ms  p99={pct(ms, 99):7.1f} ms  max={max(ms):7.1f} ms"


class Watch:
    """One poller for every key in flight (100 pollers would cost the event loop more than keywatch does):
    when the simulator first shows each key disabled."""

    def __init__(self, h: LeakHarness) -> None:
        self.h = h
        self.pending: dict[str, asyncio.Future[float]] = {}
        self.task = asyncio.get_running_loop().create_task(self._run())

    def wait(self, name: str) -> asyncio.Future[float]:
        fut = asyncio.get_running_loop().create_future()
        self.pending[name] = fut
        return fut

    async def _run(self) -> None:
        while True:
            for name, fut in list(self.pending.items()):
                if self.h.disabled_at_provider(name):
                    fut.set_result(time.perf_counter())
                    del self.pending[name]
            await asyncio.sleep(0.0005)


async def one(h: LeakHarness, watch: Watch, http: aiohttp.ClientSession, name: str, number: int) -> float:
    payload = gh.plant_alert(h.sim.state, "acme/bench", number, h.secrets[name])
    body, headers = gh.webhook(HOOK_SECRET, payload)
    done = watch.wait(name)
    t0 = time.perf_counter()
    async with http.post(h.url + "/hooks/github/secret-scanning", data=body, headers=headers) as r:
        assert r.status == 202, r.status
    return await asyncio.wait_for(done, 30) - t0


async def floor(h: LeakHarness, names: list[str]) -> list[float]:
    """The provider's part alone: a fresh adapter (the key looked up by its label first, as containment's
    first call for a key does) disabling the key."""
    from keywatch.providers.openrouter import OpenRouterAdapter

    live = h.daemon.runtime.adapter("openrouter")
    keys = {k.name: k for k in h.daemon.inventory.keys}
    out = []
    for n in names:
        adapter = OpenRouterAdapter(live.http, h.daemon.inventory.accounts, timeout=5)
        t0 = time.perf_counter()
        await adapter.disable(keys[n])
        out.append((time.perf_counter() - t0) * 1000)
        await adapter.enable(keys[n])
    return out


async def main(reports: int) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    tmp = Path(tempfile.mkdtemp(prefix="kw-bench-leak-"))
    n = 3 + 2 * reports + 5
    h = await start(tmp, n, dead=3, tag="BEN", timeout="10s")  # probe.timeout as the default
    try:
        healthy = [f"k{i}" for i in range(3, n)]
        floor_ms = await floor(h, healthy[-5:])
        watch = Watch(h)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as http:
            serial = [(await one(h, watch, http, name, i + 1)) * 1000 for i, name in enumerate(healthy[:reports])]
            burst_names = healthy[reports : 2 * reports]
            t0 = time.perf_counter()
            burst = await asyncio.gather(*(one(h, watch, http, name, 1000 + i) for i, name in enumerate(burst_names)))
            wall = time.perf_counter() - t0
        watch.task.cancel()
        await h.leaks.idle()
        contained = sum(1 for name in healthy[: 2 * reports] if h.disabled_at_provider(name))
        hist = h.daemon.metrics.registry
        count = hist.get_sample_value("keywatch_containment_seconds_count") or 0
        total = hist.get_sample_value("keywatch_containment_seconds_sum") or 0
        under_1s = hist.get_sample_value("keywatch_containment_seconds_bucket", {"le": "1.0"}) or 0
        print(
            f"fleet {n} keys (3 disabled as dead), {reports} reports one at a time + {reports} in a burst; "
            f"{contained}/{2 * reports} keys deactivated at the provider"
        )
        print(line("webhook -> provider disable, serial", serial))
        print(line("webhook -> provider disable, burst", [b * 1000 for b in burst]) + f"  wall={wall:.2f} s")
        print(
            f"{'keywatch_containment_seconds':<34} n={int(count):<4} mean={total / max(count, 1) * 1000:7.1f} ms  "
            f"<=1s: {int(under_1s)}/{int(count)}"
        )
        print(line("floor: bare provider disable", floor_ms))
        print(
            f"serial p50 / floor p50 = {statistics.median(serial) / statistics.median(floor_ms):.1f}x; "
            f"target p99 <= 1000 ms: {'met' if pct(serial, 99) <= 1000 else 'NOT met'} (serial), "
            f"{'met' if pct([b * 1000 for b in burst], 99) <= 1000 else 'NOT met'} (burst)"
        )
    finally:
        await stop(h)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--reports", type=int, default=100)
    asyncio.run(main(ap.parse_args().reports))
