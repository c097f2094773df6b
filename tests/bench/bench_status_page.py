"""Benchmark: the status page at / for a large fleet, over real HTTP. Not part of the test suite; it prints
its figures. Run:

    .venv/bin/python tests/bench/bench_status_page.py [--keys 10000] [--requests 50]

Fills a StateTracker with `--keys` keys, serves the page with web.WebServer on loopback, and times
`--requests` requests each of: the first page, a name filter, a health + provider filter, and the last page.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx2

from keywatch.domain import Health, KeyState
from keywatch.state import StateTracker
from keywatch.statuspage import PageSource, StatusPage
from keywatch.web import WebServer

HEALTHS = list(Health)


async def main(keys: int, requests: int) -> None:
    now = datetime.now(UTC)
    tracker = StateTracker()
    for i in range(keys):
        tracker.set(KeyState(key=f"key-{i:06d}", provider=("openai", "anthropic", "openrouter")[i % 3],
                             fingerprint=f"fp{i}", masked="sk-...abcd", health=HEALTHS[i % len(HEALTHS)],
                             health_since=now - timedelta(minutes=i % 90), last_probe_at=now, latency_ms=120.0))
    source = PageSource(keys=tracker.snapshot, events=lambda n: [], outages=lambda: {})
    server = WebServer("127.0.0.1:0", lambda: iter(()), lambda: (True, {}))
    server.add_status_page(StatusPage(source), None)
    await server.start()
    base = f"http://127.0.0.1:{server.bound_port}/"
    last = -(-keys // 100)
    cases = {"first page": "", "name filter": "?name=key-0042", "health+provider": "?health=invalid&provider=openai",
             "last page": f"?page={last}"}
    print(f"status page, {keys} keys, {requests} requests per case (ms per request: median / max; body size)")
    async with httpx2.AsyncClient() as client:
        for label, query in cases.items():
            times = []
            size = 0
            for _ in range(requests):
                t0 = time.perf_counter()
                r = await client.get(base + query)
                times.append((time.perf_counter() - t0) * 1000)
                size = len(r.content)
                assert r.status_code == 200
            print(f"  {label:<16} {statistics.median(times):7.1f} / {max(times):7.1f} ms   {size / 1024:6.1f} kB")
    await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.keys, args.requests))
