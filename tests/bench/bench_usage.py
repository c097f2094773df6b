"""Benchmark: 90 days of hourly usage for 1,000 keys. Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_usage.py [--keys 1000] [--days 90] [--database sqlite|postgres]

1. history: 90 daily pulls' worth of rows (hourly tokens + daily costs per key) written through the same
   replace-window path a pull uses, one day per transaction;
2. pull: one real hourly pull (2-day lookback) of 1,000 keys' usage and costs from the simulator's OpenAI
   Admin API over HTTP, every page followed, attributed and stored;
3. the database size after;
4. budgets: one evaluation (3 periods + the forecast series) with a label budget per 10 keys;
5. `keywatch usage --since 90d` (by key, and by label:team) in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from keywatch.settings.loader import build_inventory, parse
from keywatch.sim.routes.usage_openai import set_fixtures
from keywatch.sim.server import Simulator
from keywatch.store.repo import Store
from keywatch.usage.rows import PullResult, Replace, UsageRow
from keywatch.usage.service import UsageService
from keywatch.usage.store import UsageStore

ADMIN = "sk-admin-bench" + "a" * 30 + "ADMN"


class BenchDaemon:
    def __init__(self, inventory):
        self.inventory = inventory
        self.signals: dict[str, set[str]] = {}
        self.scheduler = None
        self.alerts = 0

    async def emit_alert(self, alert) -> None:
        self.alerts += 1

    def record(self, event) -> None:
        pass


def config_text(db: str, sim_url: str, keys: int) -> str:
    lines = ["[daemon]", f'database = "{db}"', "[usage]", 'lookback = "2d"', "",
             "[[accounts]]", 'name = "openai-org"', 'provider = "openai"', 'admin_secret = "env:KW_BENCH_ADMIN"',
             f'base_url = "{sim_url}/openai/v1"', ""]
    for i in range(keys):
        lines += ["[[keys]]", f'name = "key-{i:04d}"', 'provider = "openai"', f'secret = "env:KW_BENCH_KEY_{i}"',
                  'account = "openai-org"', f'provider_key_id = "key_{i:04d}"',
                  f'labels = {{ team = "team-{i % 100:02d}" }}', ""]
    for t in range(0, 100):
        lines += ["[[budgets]]", f'name = "team-{t:02d}"', f'labels = {{ team = "team-{t:02d}" }}',
                  'period = "monthly"', 'usd = "1000"', ""]
    return "\n".join(lines)


def history_rows(keys: int, day: datetime) -> list[UsageRow]:
    rows = []
    for i in range(keys):
        scope = f"key:key-{i:04d}"
        for h in range(24):
            rows.append(UsageRow("openai-org", "openai", "usage", scope, "1h", day + timedelta(hours=h),
                                 model="gpt-4o-mini", input_tokens=1000 + i, output_tokens=100 + h, requests=3))
        rows.append(UsageRow("openai-org", "openai", "cost", scope, "1d", day, line_item="gpt-4o-mini, input",
                             cost=Decimal("0.012345")))
    return rows


def db_size(url: str, store: Store) -> int:
    if url.startswith("sqlite"):
        with store.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    with store.engine.connect() as c:
        return int(c.exec_driver_sql("SELECT pg_database_size(current_database())").scalar())


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kw-bench-usage-"))
    if args.database == "sqlite":
        url = f"sqlite:///{tmp / 'kw.db'}"
    else:
        url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    os.environ["KW_BENCH_ADMIN"] = ADMIN
    for i in range(args.keys):
        os.environ[f"KW_BENCH_KEY_{i}"] = f"sk-proj-bench{i:06d}" + "k" * 30 + "BNCH"
    sim = Simulator()
    await sim.start()
    sim.set_key(ADMIN, "openai", "admin")
    text = config_text(url, sim.url or "", args.keys)
    (tmp / "keywatch.toml").write_text(text)
    inventory = build_inventory(parse(text), str(tmp / "keywatch.toml"))
    store = Store(url)
    store.upgrade()
    if args.database == "postgres":
        with store.engine.begin() as c:
            c.exec_driver_sql("DELETE FROM usage_rollups; DELETE FROM usage_sources; DELETE FROM budget_marks")
    ustore = UsageStore(store.engine)
    now = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
    first_day = (now - timedelta(days=args.days)).replace(hour=0, minute=0)

    t0 = time.perf_counter()
    n = 0
    for d in range(args.days):
        day = first_day + timedelta(days=d)
        rows = history_rows(args.keys, day)
        n += len(rows)
        result = PullResult("openai-org", "openai", rows=rows, replaces=[
            Replace("openai-org", "usage", "1h", day, day + timedelta(days=1)),
            Replace("openai-org", "cost", "1d", day, day + timedelta(days=1))])
        ustore.apply(result, now)
    history_s = time.perf_counter() - t0
    print(f"history: {n:,} rows ({args.days} days x {args.keys} keys, hourly tokens + daily costs) "
          f"in {history_s:.1f} s ({n / history_s:,.0f} rows/s)")

    # one real pull from the simulator: the last 2 days of hourly usage for every key
    start = now - timedelta(days=2)
    usage, costs = [], []
    for i in range(args.keys):
        for h in range(48):
            at = int((start + timedelta(hours=h)).timestamp())
            usage.append({"at": at, "api_key_id": f"key_{i:04d}", "project_id": "proj_1", "model": "gpt-4o-mini",
                          "input_tokens": 1000, "output_tokens": 100, "num_model_requests": 3})
        for d in range(3):
            costs.append({"at": int((start + timedelta(days=d)).timestamp()), "api_key_id": f"key_{i:04d}",
                          "project_id": "proj_1", "line_item": "gpt-4o-mini, input", "amount": "0.5"})
    set_fixtures(sim.state, "openai", usage=usage, costs=costs)
    service = UsageService(BenchDaemon(inventory), ustore)
    t0 = time.perf_counter()
    results = await service.pull_all(now)
    pull_s = time.perf_counter() - t0
    r = results["openai-org"]
    print(f"pull: {len(r.rows):,} rows from {sum(sim.state.requests.values())} HTTP requests in {pull_s:.1f} s "
          f"(errors: {r.errors or 'none'})")
    size = db_size(url, store)
    with store.engine.connect() as c:
        stored = int(c.exec_driver_sql("SELECT count(*) FROM usage_rollups").scalar())
    print(f"database: {size / 1e6:.0f} MB after ({args.database}; {stored:,} rollup rows, "
          f"{size / stored:.0f} bytes per row)")

    t0 = time.perf_counter()
    statuses = await service.evaluate(now)
    print(f"budgets: {len(statuses)} budgets evaluated in {time.perf_counter() - t0:.2f} s")

    from keywatch.cli import main as cli_main

    for by in ("key", "label:team"):
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            rc = cli_main(["usage", "-c", str(tmp / "keywatch.toml"), "--since", f"{args.days}d", "--by", by])
        print(f"keywatch usage --since {args.days}d --by {by}: {time.perf_counter() - t0:.2f} s "
              f"(rc {rc}, {len(out.getvalue().splitlines())} lines)")
    await service.aclose()
    await sim.stop()
    store.dispose()


if __name__ == "__main__":
    asyncio.run(main())
