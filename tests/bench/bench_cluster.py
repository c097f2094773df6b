"""Benchmark: several instances sharing one PostgreSQL database, against one instance alone.

Not part of the test suite; it prints its figures. Needs the PostgreSQL at 127.0.0.1:5432 (user postgres);
each run creates a database of its own and drops it at the end. Run:

    .venv/bin/python tests/bench/bench_cluster.py [--keys 30k] [--instances 3] [--latency-ms 50] [--cycles 5]
    .venv/bin/python tests/bench/bench_cluster.py --kills 50 [--keys 300]

Cycle mode (default). The simulator runs in a process of its own with `--latency-ms` per answer.
1. One instance probes keys/instances keys (10,000 of 30,000): the baseline.
2. `--instances` instances share all the keys on a fresh database.
For each: the median cycle time per instance (`keywatch_cycle_duration_seconds` after the first cycle),
database transactions and rows written per cycle (pg_stat_database), and the database's growth per day of
operation extrapolated from the measured window (pg_database_size). Target: the shared cycle within 1.3x
the baseline's (each instance probes the same number of keys; the rest is the cost of sharing).

Kill mode (`--kills N`). Three instances, keys changing state at the simulator all along; the leader is
killed with SIGKILL N times (restarted after each takeover). Reported: takeover time p50/p99/max (from the
kill to one new leader every live instance names), alerts delivered per identity (by delivery id at a
webhook receiver), and instances per action in the audit trail (1 means exactly one actor per action).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_probe_cycle import register_keys, size_arg, start_simulator

PG = "postgresql+psycopg://postgres@127.0.0.1:5432"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def cluster_view(port: int) -> dict:
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.loads(r.read()).get("cluster") or {}
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read()).get("cluster") or {}
    except OSError:
        return {}


@contextlib.contextmanager
def database():
    from sqlalchemy import create_engine, text

    name = f"kw_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"{PG}/{name}", name
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def db_counters(url: str, name: str) -> tuple[int, int, int]:
    """(transactions committed, rows written, database bytes)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            xact, rows = c.execute(
                text(
                    "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
                    "WHERE datname = :d"
                ),
                {"d": name},
            ).one()
            size = c.execute(text("SELECT pg_database_size(:d)"), {"d": name}).scalar_one()
    finally:
        engine.dispose()
    return int(xact), int(rows), int(size)


def write_config(
    tmp: Path,
    url: str,
    sim: str,
    n_keys: int,
    instance: str,
    port: int,
    interval: str,
    concurrency: int,
    extra: str = "",
) -> Path:
    lines = [
        "[daemon]",
        f'database = "{url}"',
        f'listen = "127.0.0.1:{port}"',
        'log_level = "warning"',
        'metrics_per_key = "none"',
        "[probe]",
        f'interval = "{interval}"',
        f"concurrency = {concurrency}",
        'timeout = "10s"',
        "jitter = 0",
        "spread = 0",
        "[cluster]",
        f'instance = "{instance}"',
        'heartbeat = "500ms"',
        'takeover_timeout = "3s"',
    ]
    for i in range(n_keys):
        lines += [
            "[[keys]]",
            f'name = "key-{i:06d}"',
            'provider = "openai"',
            f'secret = "file:{tmp}/secrets/k{i}"',
            f'base_url = "{sim}/openai/v1"',
        ]
    cfg = tmp / f"{instance}.toml"
    cfg.write_text("\n".join(lines) + extra)
    return cfg


def secrets_dir(tmp: Path, n: int) -> list[str]:
    d = tmp / "secrets"
    d.mkdir(mode=0o700, exist_ok=True)
    out = []
    for i in range(n):
        s = f"sk-proj-bench{uuid.uuid4().hex}{i:06d}"
        (d / f"k{i}").write_text(s)
        out.append(s)
    return out


def env() -> dict[str, str]:
    return {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}


def run_fleet(
    tmp: Path, sim: str, n_keys: int, instances: int, cycles: int, interval: float, concurrency: int
) -> dict[str, float]:
    with database() as (url, name):
        ports = [free_port() for _ in range(instances)]
        procs = []
        for j, port in enumerate(ports):
            cfg = write_config(tmp, url, sim, n_keys, f"i{j}", port, f"{interval}s", concurrency)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
                    env=env(),
                    stdout=(tmp / f"i{j}.log").open("a"),
                    stderr=subprocess.STDOUT,
                )
            )
        try:

            def cycles_done(port: int) -> float:
                return metric(port, "keywatch_last_cycle_timestamp_seconds") or 0.0

            deadline = time.monotonic() + 600
            while not all(cycles_done(p) for p in ports):  # the first cycle (members still joining)
                if time.monotonic() > deadline:
                    raise SystemExit("the instances did not finish a first cycle")
                time.sleep(0.5)
            time.sleep(interval)  # every member has joined: the shares are stable from here
            x0, r0, s0 = db_counters(url, name)
            t0 = time.monotonic()
            durations: list[float] = []
            seen = {p: cycles_done(p) for p in ports}
            while len(durations) < cycles * instances:
                for p in ports:
                    done = cycles_done(p)
                    if done > seen[p]:
                        seen[p] = done
                        durations.append(metric(p, "keywatch_cycle_duration_seconds") or 0.0)
                time.sleep(0.1)
            window = time.monotonic() - t0
            x1, r1, s1 = db_counters(url, name)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
    fleet_cycles = window / interval
    return {
        "cycle_s": statistics.median(durations),
        "xacts_per_cycle": (x1 - x0) / fleet_cycles,
        "rows_per_cycle": (r1 - r0) / fleet_cycles,
        # Growth per cycle, at the default probe.interval (5m: 288 cycles a day); dead row versions
        # before autovacuum reclaims them included, so an upper bound.
        "mb_per_day": (s1 - s0) / fleet_cycles * 288 / 1e6,
        "keys_per_instance": n_keys / instances,
    }


def cycle_mode(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="kw-bench-cluster-") as d:
        tmp = Path(d)
        secrets = secrets_dir(tmp, args.keys)
        sim, url = start_simulator(args.latency_ms)
        try:
            register_keys(url, secrets)
            per = args.keys // args.instances
            one = run_fleet(tmp, url, per, 1, args.cycles, args.interval, args.concurrency)
            many = run_fleet(tmp, url, args.keys, args.instances, args.cycles, args.interval, args.concurrency)
        finally:
            sim.terminate()
            sim.wait(10)
    print(f"simulator latency {args.latency_ms:g} ms, concurrency {args.concurrency}, interval {args.interval:g}s")
    for label, r in ((f"1 instance, {per} keys", one), (f"{args.instances} instances, {args.keys} keys", many)):
        print(
            f"{label:>28}: cycle {r['cycle_s']:.2f}s per instance ({r['keys_per_instance']:.0f} keys each), "
            f"{r['xacts_per_cycle']:.0f} transactions and {r['rows_per_cycle']:.0f} rows written per cycle, "
            f"database +{r['mb_per_day']:.1f} MB/day at interval 5m"
        )
    ratio = many["cycle_s"] / one["cycle_s"]
    print(f"cycle ratio shared/alone: {ratio:.2f} (target <= 1.3): {'ok' if ratio <= 1.3 else 'MISSED'}")


def kill_mode(args: argparse.Namespace) -> None:
    from tests.integration.test_notify_delivery import ThreadedReceiver

    rng = random.Random(13)
    with tempfile.TemporaryDirectory(prefix="kw-bench-kills-") as d, database() as (url, _name):
        tmp = Path(d)
        secrets = secrets_dir(tmp, args.keys)
        sim, sim_url = start_simulator(0)
        rx = ThreadedReceiver()
        rx.__enter__()
        extra = (
            "\n[safety]\ndisable_after_probes = 1\nenable_after_probes = 1\nalert_clear_probes = 1\n"
            "max_disabled_percent = 100\nmax_actions_per_policy_per_hour = 100000\n"
            '\n[alerts]\ngroup_wait = "0s"\nretry_base = "200ms"\nretry_max = "400ms"\n'
            '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
        )
        run_env = {**env(), "KW_HOOK": rx.url("/hook"), "KW_HMAC": "hmac-secret-0123456789"}
        ports = {f"i{j}": free_port() for j in range(3)}
        procs: dict[str, subprocess.Popen[bytes]] = {}

        def start(inst: str) -> None:
            cfg = write_config(tmp, url, sim_url, args.keys, inst, ports[inst], "1s", 32, extra)
            procs[inst] = subprocess.Popen(
                [sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
                env=run_env,
                stdout=(tmp / f"{inst}.log").open("a"),
                stderr=subprocess.STDOUT,
            )

        def one_leader() -> str | None:
            live = [i for i, p in procs.items() if p.poll() is None]
            views = {i: cluster_view(ports[i]) for i in live}
            leaders = [i for i, v in views.items() if v.get("leader")]
            if len(leaders) == 1 and all(v.get("leader_instance") == leaders[0] for v in views.values()):
                return leaders[0]
            return None

        def settled() -> bool:
            return one_leader() is not None and all(len(cluster_view(ports[i]).get("members", [])) == 3 for i in procs)

        takeovers: list[float] = []
        try:
            register_keys(sim_url, secrets)
            for inst in ports:
                start(inst)
            wait(settled, 60)
            for _ in range(args.kills):
                leader = one_leader()
                assert leader is not None
                for s in rng.sample(secrets, max(1, len(secrets) // 20)):  # keys die and recover meanwhile
                    set_behaviour(sim_url, s, rng.choice(["invalid", "healthy"]))
                time.sleep(rng.uniform(0.2, 1.0))
                procs[leader].send_signal(signal.SIGKILL)
                procs[leader].wait(10)
                t0 = time.monotonic()
                wait(lambda: one_leader() is not None, 30)
                takeovers.append(time.monotonic() - t0)
                start(leader)
                wait(settled, 60)
            for s in secrets:
                set_behaviour(sim_url, s, "healthy")
            with contextlib.suppress(SystemExit):
                wait(lambda: not left_firing(rx), 30)  # every key healthy again: every alert resolved
        except BaseException:
            for inst in ports:
                log = (tmp / f"{inst}.log").read_text()
                print(f"--- {inst} (last lines)\n" + "\n".join(log.splitlines()[-5:]), file=sys.stderr)
            raise
        finally:
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(60)
            sim.terminate()
            sim.wait(10)
        deliveries = Counter(r.headers["webhook-id"] for r in rx.accepted())
        stuck = left_firing(rx)
        rx.__exit__(None, None, None)
        total, doubled, resumed, actors = repeated_actions(url)
    q = statistics.quantiles(takeovers, n=100, method="inclusive") if len(takeovers) >= 2 else takeovers * 99
    print(
        f"{args.kills} kills of the leader, 3 instances, {args.keys} keys changing state, takeover_timeout 3s, "
        f"heartbeat 500ms"
    )
    print(f"takeover p50 {statistics.median(takeovers):.2f}s, p99 {q[98]:.2f}s, max {max(takeovers):.2f}s")
    print(
        f"deliveries: {len(deliveries)} messages, {sum(n - 1 for n in deliveries.values())} repeated "
        "(same delivery id, after a kill between send and mark)"
    )
    print(f"alerts left firing after every key recovered: {len(stuck)} (lost resolutions)")
    print(
        f"actions (disable/enable): {total}; done twice: {doubled}; started again after a kill interrupted "
        f"them: {resumed}; by instances {sorted(a for a in actors if a)}"
    )


def repeated_actions(url: str) -> tuple[int, int, int, set[str]]:
    """(actions, repeats after a finished one, repeats after one the kill interrupted, instances that acted).

    A disable or an enable started again for a key before the opposite one is a repeat. After a start whose
    `action_done` never came (its leader was killed in between) the next leader starts it again: that is
    the resumption the audit trail shows, not two actors. A repeat after a finished action would be one
    action done twice by the fleet: that number must be 0."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(
                text("SELECT kind, key, data FROM events WHERE kind IN ('action_started', 'action_done') ORDER BY id")
            ).all()
    finally:
        engine.dispose()
    last: dict[str, tuple[str, bool]] = {}  # key -> (action, finished)
    doubled = resumed = total = 0
    actors: set[str] = set()
    for kind, key, data in rows:
        data = data or {}
        action = data.get("action")
        if action not in ("disable", "enable") or data.get("dry_run"):
            continue
        if kind == "action_done":
            if last.get(key, ("", True))[0] == action:
                last[key] = (action, True)
            continue
        total += 1
        actors.add(data.get("instance"))
        prev = last.get(key)
        if prev is not None and prev[0] == action:
            if prev[1]:
                doubled += 1
            else:
                resumed += 1
        last[key] = (action, False)
    return total, doubled, resumed, actors


def left_firing(rx: object) -> list[str]:
    """Identities whose last message at the receiver says firing."""
    last: dict[str, bool] = {}
    for r in rx.accepted():  # type: ignore[attr-defined]
        for a in r.json()["alerts"]:
            last[a["identity"]] = a["firing"]
    return sorted(i for i, firing in last.items() if firing and i.startswith("key_health:"))


def set_behaviour(sim_url: str, secret: str, behaviour: str) -> None:
    import json

    body = json.dumps([{"secret": secret, "provider": "openai", "behaviour": behaviour}]).encode()
    req = urllib.request.Request(
        f"{sim_url}/_sim/keys", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=30).read()


def wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s")
        time.sleep(0.02)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=size_arg, default=None, help="keys in all (default 30k; 300 with --kills)")
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--cycles", type=int, default=5, help="measured cycles per instance")
    p.add_argument("--interval", type=float, default=None, help="probe.interval in seconds (default: from keys)")
    p.add_argument("--kills", type=int, default=0, help="kill mode: kill the leader this many times")
    args = p.parse_args()
    if args.kills:
        args.keys = args.keys or 300
        kill_mode(args)
        return
    args.keys = args.keys or 30_000
    if args.interval is None:  # room for a cycle: keys per instance x latency / concurrency, twice over
        args.interval = max(2.0, 2 * (args.keys / args.instances) * args.latency_ms / 1000 / args.concurrency + 1)
    cycle_mode(args)


if __name__ == "__main__":
    main()
