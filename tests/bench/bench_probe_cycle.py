"""Benchmark: one daemon probing 10,000 keys against the simulator in its own process.

Not part of the test suite; it prints its figures. Run:

    .venv/bin/python tests/bench/bench_probe_cycle.py [--keys 10000] [--latency-ms 50] [--concurrency 100]

Reports the cycle time and its ratio to the latency bound (keys x latency / concurrency), CPU milliseconds
per probe in the keywatch process (and its probe workers), peak RSS, and the /metrics scrape time and size.
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


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_pids(daemon) -> list[int]:
    workers = getattr(daemon._prober, "_workers", None) or []
    return [w.process.pid for w in workers if w is not None and w.process.is_alive()]


def peak_rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


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
                 f"workers = {args.workers}",
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
        figures: dict[str, float] = {"rss_started_mb": rss_mb(), "peak_started_mb": peak_rss_mb()}
        for label in ("first", "steady"):
            sim0 = proc_cpu_seconds(sim.pid)
            workers0 = {pid: proc_cpu_seconds(pid) for pid in worker_pids(daemon)}
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            report = await daemon.cycle()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            cpu += sum(proc_cpu_seconds(pid) - workers0.get(pid, 0.0) for pid in worker_pids(daemon))
            figures[f"{label}_sim_cpu_share"] = (proc_cpu_seconds(sim.pid) - sim0) / wall
            healthy = sum(1 for r in report.results if str(r.health) == "healthy")
            figures[f"{label}_cycle_s"] = wall
            figures[f"{label}_cpu_ms_per_probe"] = cpu * 1000 / args.keys
            figures[f"{label}_healthy"] = healthy
            figures[f"{label}_peak_mb"] = peak_rss_mb()
        # Scraped from another process, as Prometheus does: the client's memory is not keywatch's.
        scraper = (
            "import sys, time, urllib.request\n"
            "times = []\n"
            "for _ in range(5):\n"
            "    t = time.perf_counter(); body = urllib.request.urlopen(sys.argv[1], timeout=30).read()\n"
            "    times.append(time.perf_counter() - t)\n"
            "print(times[0], sorted(times)[2], len(body))\n"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", scraper, f"http://127.0.0.1:{daemon.web_port}/metrics",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        first, median, size = out.split()
        figures["scrape_s"], figures["scrape_median_s"], figures["scrape_bytes"] = (
            float(first), float(median), int(size))
        figures["workers_peak_rss_mb"] = sum(peak_rss_of(pid) for pid in worker_pids(daemon))
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
    p.add_argument("--workers", type=int, default=1, help="probe.workers (processes that probe)")
    args = p.parse_args()
    f = asyncio.run(run(args))
    bound = f["bound_s"]
    print(f"keys={args.keys} latency={args.latency_ms:g}ms concurrency={args.concurrency} workers={args.workers} "
          f"bound={bound:.2f}s")
    for label in ("first", "steady"):
        print(f"{label:>6} cycle: {f[f'{label}_cycle_s']:.2f}s  ratio={f[f'{label}_cycle_s'] / bound:.2f}  "
              f"cpu={f[f'{label}_cpu_ms_per_probe']:.2f} ms/probe  healthy={int(f[f'{label}_healthy'])}  "
              f"simulator used {f[f'{label}_sim_cpu_share']:.0%} of a core")
    print(f"peak RSS: {f['peak_rss_mb']:.0f} MB (after start-up: {f['peak_started_mb']:.0f}, after the first "
          f"cycle: {f['first_peak_mb']:.0f}, after the second: {f['steady_peak_mb']:.0f})"
          + (f"; worker processes: {f['workers_peak_rss_mb']:.0f} MB more" if args.workers > 1 else ""))
    print(f"/metrics scrape: first {f['scrape_s']:.3f}s, median of 5 {f['scrape_median_s']:.3f}s, "
          f"{f['scrape_bytes'] / 1e6:.1f} MB")
    print(f"database after two cycles: {f['db_bytes'] / 1e6:.1f} MB")
    print("targets: ratio <= 2.0, cpu <= 2 ms/probe, RSS <= 250 MB, scrape <= 0.5 s")


if __name__ == "__main__":
    main()
