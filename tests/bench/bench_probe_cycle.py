"""Benchmark: one daemon probing 10,000 keys against the simulator in its own process.

Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_probe_cycle.py [--keys 10000] [--latency-ms 50] [--concurrency 100]

Reports the cycle time and its ratio to the latency bound (keys x latency / concurrency), CPU milliseconds
per probe in the keywatch process, peak RSS, and the /metrics scrape time and size.
Targets: ratio <= 2.0; <= 2 CPU-ms per probe; RSS <= 250 MB; scrape <= 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by another process (the simulator), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_simulator(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "keywatch.sim", "--port", "0", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def register_keys(url: str, secrets: list[str]) -> None:
    for i in range(0, len(secrets), 2000):
        body = json.dumps([{"secret": s, "provider": "openai", "behaviour": "healthy"} for s in secrets[i:i + 2000]])
        req = urllib.request.Request(f"{url}/_sim/keys", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=60).read()


async def run(args: argparse.Namespace) -> dict[str, float]:
    from keywatch import logging as kwlog
    from keywatch.daemon import Daemon

    kwlog.setup("console", "warning")
    sim, url = start_simulator(args.latency_ms)
    try:
        secrets = [f"sk-proj-bench{i:08d}{'x' * 40}" for i in range(args.keys)]
        register_keys(url, secrets)
        tmp = Path(tempfile.mkdtemp(prefix="keywatch-bench-"))
        lines = ["[daemon]", f'database = "sqlite:///{tmp / "k.db"}"', 'listen = "127.0.0.1:0"',
                 'log_level = "warning"', "[probe]", 'interval = "1h"', f"concurrency = {args.concurrency}",
                 'timeout = "10s"', "jitter = 0"]
        for i, s in enumerate(secrets):
            os.environ[f"KWB_{i}"] = s
            lines += ["[[keys]]", f'name = "key-{i:05d}"', 'provider = "openai"', f'secret = "env:KWB_{i}"',
                      f'base_url = "{url}/openai/v1"', f'labels = {{ team = "t{i % 20}" }}']
        cfg = tmp / "k.toml"
        cfg.write_text("\n".join(lines))

        daemon = Daemon(cfg)
        await daemon.start()
        daemon._scheduler.pause()  # the benchmark drives the cycles itself
        await asyncio.sleep(0)
        figures: dict[str, float] = {}
        for label in ("first", "steady"):
            sim0 = proc_cpu_seconds(sim.pid)
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            report = await daemon.cycle()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            figures[f"{label}_sim_cpu_share"] = (proc_cpu_seconds(sim.pid) - sim0) / wall
            healthy = sum(1 for r in report.results if str(r.health) == "healthy")
            figures[f"{label}_cycle_s"] = wall
            figures[f"{label}_cpu_ms_per_probe"] = cpu * 1000 / args.keys
            figures[f"{label}_healthy"] = healthy
        import httpx2

        async with httpx2.AsyncClient(timeout=30) as http:
            t0 = time.perf_counter()
            resp = await http.get(f"http://127.0.0.1:{daemon.web_port}/metrics")
            figures["scrape_s"] = time.perf_counter() - t0
            figures["scrape_bytes"] = len(resp.content)
        daemon.request_stop()
        await daemon.shutdown()
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures["bound_s"] = args.keys * args.latency_ms / 1000 / args.concurrency
        figures["db_bytes"] = sum(p.stat().st_size for p in tmp.glob("k.db*"))
        return figures
    finally:
        sim.terminate()
        sim.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args()
    f = asyncio.run(run(args))
    bound = f["bound_s"]
    print(f"keys={args.keys} latency={args.latency_ms:g}ms concurrency={args.concurrency} "
          f"bound={bound:.2f}s")
    for label in ("first", "steady"):
        print(f"{label:>6} cycle: {f[f'{label}_cycle_s']:.2f}s  ratio={f[f'{label}_cycle_s'] / bound:.2f}  "
              f"cpu={f[f'{label}_cpu_ms_per_probe']:.2f} ms/probe  healthy={int(f[f'{label}_healthy'])}  "
              f"simulator used {f[f'{label}_sim_cpu_share']:.0%} of a core")
    print(f"peak RSS: {f['peak_rss_mb']:.0f} MB")
    print(f"/metrics scrape: {f['scrape_s']:.3f}s, {f['scrape_bytes'] / 1e6:.1f} MB")
    print(f"database after two cycles: {f['db_bytes'] / 1e6:.1f} MB")
    print("targets: ratio <= 2.0, cpu <= 2 ms/probe, RSS <= 250 MB, scrape <= 0.5 s")


if __name__ == "__main__":
    main()
