"""Benchmark: 100 OpenRouter keys rotated at once against the simulator, while clients that read each key
from its file destination before every request hammer the provider. Not part of the test suite; it prints
its figures. Run:

    .venv/bin/python tests/bench/bench_rotation.py [--keys 100] [--clients 20] [--propagation 0.5]

Figures: wall time of the whole batch (create, publish, verify through the propagation delay, promote, a
1 s grace, retire) and its ratio to one key rotated alone in the same run (the floor), requests the clients
sent and how many failed (must be 0), credentials left at the provider (must equal the keys), peak RSS of
the process (simulator included: it runs in the same process).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx2

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.openrouter import OpenRouterAdapter
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import RotationStore
from keywatch.secretstores import open_destination
from keywatch.sim import Simulator
from keywatch.store.repo import Store

MANAGEMENT = "sk-or-v1-" + "ab" * 32


async def main(n_keys: int, n_clients: int, propagation: float) -> None:
    sim = Simulator()
    await sim.start()
    sim.set_key(MANAGEMENT, "openrouter", "admin")
    sim.state.propagation_delay_s = propagation
    base = f"{sim.url}/openrouter/api/v1"
    tmp = Path(tempfile.mkdtemp(prefix="kw-bench-rot-"))
    store = Store(f"sqlite:///{tmp / 'k.db'}")
    store.upgrade()
    rows = RotationStore(store.engine)
    account = Account("or", "openrouter", admin_secret=Secret(MANAGEMENT), base_url=base)
    async with httpx2.AsyncClient(limits=httpx2.Limits(max_connections=200)) as http:
        adapter = OpenRouterAdapter(http, {"or": account}, timeout=10)
        keys, paths = [], []
        for i in range(n_keys):
            secret = f"sk-or-v1-{i:064d}"
            sim.set_key(secret, "openrouter", hash=f"h{i:04d}", name=f"k{i:03d}", limit=10)
            path = tmp / f"k{i:03d}.key"
            path.write_text(secret + "\n")
            keys.append(ManagedKey(f"k{i:03d}", "openrouter", Secret(secret), "file:x", base_url=base, account="or"))
            paths.append(path)
        sent = failed = 0
        stop = asyncio.Event()

        async def client(c: int) -> None:
            nonlocal sent, failed
            i = c
            while not stop.is_set():
                value = paths[i].read_text().strip()
                k = keys[i]
                r = await adapter.probe(ManagedKey(k.name, k.provider, Secret(value), "file:x", base_url=base,
                                                   account="or"))
                sent += 1
                failed += r.health is not Health.HEALTHY
                i = (i + n_clients) % n_keys

        async def save(r) -> None:
            await asyncio.to_thread(rows.save, r)

        async def rotate(k: ManagedKey, path: Path) -> str:
            m = Machine(adapter, [open_destination(f"file:{path}")], save, lambda: datetime.now(UTC),
                        Policy(grace=timedelta(seconds=1), verify_timeout=timedelta(seconds=60), verify_interval=0.2,
                               allow_destructive=True))
            r = await m.run(new_rotation(k, "create", actor="bench", reason="bench", at=datetime.now(UTC)), k)
            while r.state == "running":
                await asyncio.sleep(0.2)
                r = await m.run(r, k)
            return r.state

        # The floor, in the same run: one key rotated alone (the same steps, propagation and grace).
        floor_secret = "sk-or-v1-" + "f" * 64
        sim.set_key(floor_secret, "openrouter", hash="hfloor", name="floor", limit=10)
        floor_path = tmp / "floor.key"
        floor_path.write_text(floor_secret + "\n")
        floor_key = ManagedKey("floor", "openrouter", Secret(floor_secret), "file:x", base_url=base, account="or")
        started = time.perf_counter()
        await rotate(floor_key, floor_path)
        floor = time.perf_counter() - started

        clients = [asyncio.ensure_future(client(c)) for c in range(n_clients)]
        await asyncio.sleep(0.5)
        started = time.perf_counter()
        states = await asyncio.gather(*(rotate(k, p) for k, p in zip(keys, paths, strict=True)))
        wall = time.perf_counter() - started
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
        left = len([c for c in await adapter.list_credentials(keys[0])]) - 1  # less the floor key's
    await sim.stop()
    store.dispose()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"keys rotated at once: {n_keys}; done: {states.count('done')}, rolled back: {states.count('rolled_back')}")
    print(f"wall time: {wall:.2f} s (propagation delay {propagation} s, grace 1 s); one key alone: {floor:.2f} s; "
          f"ratio {wall / floor:.2f}x the floor")
    print(f"client requests: {sent}, failed: {failed}")
    print(f"credentials left at the provider: {left} (keys: {n_keys})")
    print(f"peak RSS: {rss_mb:.0f} MB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--propagation", type=float, default=0.5)
    a = ap.parse_args()
    asyncio.run(main(a.keys, a.clients, a.propagation))
