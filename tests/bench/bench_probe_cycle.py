"""Benchmark: one daemon probing a fleet against the simulator, side by side with the network floor.

Not part of the test suite; it prints its figures. Run (sizes: 1k, 10k, 50k, 100k or any number):

    .venv/bin/python tests/bench/bench_probe_cycle.py --keys 10k [--cycles 20] [--latency-ms 50] [--concurrency 100]

What it does (the simulator runs in a process of its own, as a provider would):

Both the daemon and the floor run on the event loop `keywatch run` uses (uvloop where it is installed).
With `--one-core` both run on one CPU, and the simulator and the scraper (other hosts in production) on the
others: the fleet a single core carries.

1. The floor, in a process of its own: a bare aiohttp client makes the same GET per key over `concurrency`
   pooled connections, the least any Python prober can do; its wall time and CPU per probe are measured
   three times (median) before the daemon starts, then once more after each 5 steady cycles (the daemon
   idle). The machine's speed moves while the bench runs (a shared machine's most of all), so each block of
   5 cycles is compared with the floors run just before and just after it, and the ratios printed are the
   medians of the blocks' ratios.
2. The daemon, in this process (which imports nothing else of weight, so its RSS is the daemon's; "before the
   daemon" is this process with keywatch.daemon imported), with every secret in a file of its own (`file:`
   references; nothing in the environment; each shaped as an OpenAI project key, 164 characters), runs
   `--cycles` full cycles (at least 20 for a steady state; fewer only for a smoke run). The figures are the
   medians of the cycles after the first five; settled RSS is measured after the last cycle, once its batch is
   written; peak RSS is the process's high-water mark. Beside it, what the heap holds: Python objects alive
   and the free space left inside the small-object allocator's arenas (sys._debugmallocstats), and glibc
   malloc in use (mallinfo2), each per key since before the daemon. The fixed part is compared with the RSS of
   a process that imports only the packages keywatch is built on (the least any daemon on this stack starts
   from).
3. /metrics is scraped from another process as Prometheus scrapes it (asking for gzip) while idle (for 2 s;
   the first scrape, which renders what the cycle changed, is printed too), then without gzip (1 s), then
   while a cycle runs (every scrape during one cycle is timed, and that cycle's length is compared with the
   steady cycles'), then at a steady interval (every 2.5 s, as Prometheus scrapes every 15 s) during two
   cycles. The RSS is read again after these scrapes: in production /metrics is scraped all the
   time, so what a scrape keeps (the rendered per-key text) is part of the daemon's settled memory.

Targets at 10,000 keys, 50 ms, concurrency 100: cycle <= 1.1x the floor's, CPU <= 2x the floor's per probe,
settled RSS <= 60 MB + 2 KB per key, /metrics <= 50 ms idle and during a cycle. The temporary directory
(config, secrets, database) is removed at the end, whatever happens (an error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import inspect
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PERIODIC = 2.5  # seconds between the steady scraper's scrapes
BLOCK = 5  # steady cycles between two runs of the floor
ELSEWHERE: set[int] = set()  # --one-core: the CPUs of the simulator and the scraper (not the daemon's)


def bench_secret(i: int) -> str:
    """The fleet's secret number `i` (the floor makes the same ones): shaped as an OpenAI project key,
    `sk-proj-` and 156 random-looking characters, so the redaction index holds as much of it as of a real
    key (its 40 anchors)."""
    return "sk-proj-" + base64.urlsafe_b64encode(hashlib.shake_256(b"keywatch-bench-%d" % i).digest(117)).decode()


SCRAPER = r"""
import gzip, sys, time, urllib.request
url, until, encoding, every = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
headers = {"Accept-Encoding": "gzip"} if encoding == "gzip" else {}  # as Prometheus asks (enable_compression)
req = urllib.request.Request(url, headers=headers)
times, size, sent = [], 0, 0
while True:
    t = time.perf_counter(); body = urllib.request.urlopen(req, timeout=60).read()
    times.append(time.perf_counter() - t); sent = len(body)
    if time.time() >= until and len(times) >= 3:
        break
    if every:  # at a steady interval, as Prometheus scrapes
        time.sleep(max(0.0, t + every - time.perf_counter()))
size = len(gzip.decompress(body)) if encoding == "gzip" else sent
print(" ".join(f"{x:.6f}" for x in times), size, sent)
"""


def _loop() -> str:
    """The event loop `keywatch run` runs on (keywatch.aio): the daemon and the floor are both measured on it."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


LOOP = _loop()


def size_arg(text: str) -> int:
    text = text.strip().lower().replace("_", "").replace(",", "")
    return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB on Linux; MB as rss_mb


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def heap_mb() -> dict[str, float]:
    """Where the RSS is: Python's small-object allocator (live blocks, and free space inside its arenas,
    from sys._debugmallocstats) and glibc malloc (in use and free, from mallinfo2), in MB."""
    import ctypes
    import re

    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()

    def stat(pattern: str) -> float:
        m = re.search(pattern + r"\s*=\s*([\d,]+)", text)
        return int(m.group(1).replace(",", "")) / 1e6 if m else 0.0

    f = {"py_live": stat(r"# bytes in allocated blocks"), "py_arenas": stat(r"arenas \* \d+ bytes/arena")}
    f["py_free"] = f["py_arenas"] - f["py_live"]

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):  # not glibc >= 2.33
        return f
    mallinfo2.restype = MallInfo2
    m = mallinfo2()
    f["malloc_used"], f["malloc_free"] = (m.uordblks + m.hblkhd) / 1e6, m.fordblks / 1e6
    return f


def away(pid: int) -> None:
    """--one-core: keep a helper process (the simulator, the scraper: other hosts in production) off the
    daemon's CPU."""
    if ELSEWHERE:
        os.sched_setaffinity(pid, ELSEWHERE)


def start_simulator(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "keywatch.sim", "--port", "0", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True)
    away(proc.pid)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


def register_keys(url: str, secrets: list[str]) -> None:
    for i in range(0, len(secrets), 5000):
        body = json.dumps([{"secret": s, "provider": "openai", "behaviour": "healthy"} for s in secrets[i:i + 5000]])
        req = urllib.request.Request(f"{url}/_sim/keys", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=120).read()


FLOOR = r"""
import asyncio, resource, sys, time
import aiohttp

def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def main(target, keys, concurrency, passes):
    secrets = [bench_secret(i) for i in range(keys)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(secret):
            async with session.get(target, headers={"Authorization": f"Bearer {secret}"}) as r:
                await r.read()
                assert r.status == 200, r.status

        async def drain(queue):
            while queue:
                await one(queue.pop())

        runs = []
        for _ in range(passes):
            queue = list(secrets)
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            await asyncio.gather(*(drain(queue) for _ in range(concurrency)))
            runs.append((time.perf_counter() - t0, (cpu_seconds() - cpu0) * 1000 / keys))
    runs.sort()
    print(*runs[len(runs) // 2])

if sys.argv[4] == "uvloop":
    import uvloop
    uvloop.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])))
else:
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])))
""".replace("import aiohttp\n", "import aiohttp, base64, hashlib\n" + inspect.getsource(bench_secret))


# The packages keywatch is built on, imported in a process of their own and nothing else: the least RSS any
# daemon on this stack starts from (the fixed part of the memory budget is compared with it).
STACK = r"""
import os, sqlite3, ssl, asyncio, logging
import aiohttp, apscheduler.schedulers.asyncio, prometheus_client, pydantic, sqlalchemy, sqlalchemy.orm, structlog
print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6)
"""


def stack_floor_mb() -> float:
    return float(subprocess.run([sys.executable, "-c", STACK], check=True, capture_output=True, text=True).stdout)


def floor(url: str, keys: int, concurrency: int, passes: int = 3) -> tuple[float, float]:
    """(wall seconds, CPU ms per probe) of a bare aiohttp client doing the probes' GETs, in a process of its
    own (neither its imports nor its allocations are counted in the daemon's RSS): the median of `passes`."""
    out = subprocess.run([sys.executable, "-c", FLOOR, f"{url}/openai/v1/models", str(keys), str(concurrency),
                          LOOP, str(passes)],
                         check=True, capture_output=True, text=True).stdout
    wall, cpu = out.split()
    return float(wall), float(cpu)


async def scrape(port: int, seconds: float, encoding: str = "gzip",
                 every: float = 0.0) -> tuple[list[float], int, int]:
    """Scrapes from another process (the client's memory is not keywatch's) for about `seconds`, back to back
    or one every `every` seconds: each scrape's time to the whole body, the text's size and the bytes sent
    (gzip, as Prometheus asks, or identity)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{port}/metrics", str(time.time() + seconds), encoding,
        str(every), stdout=asyncio.subprocess.PIPE)
    away(proc.pid)
    out, _ = await proc.communicate()
    *times, size, sent = out.split()
    return [float(t) for t in times], int(size), int(sent)


def write_config(tmp: Path, url: str, secrets: list[str], args: argparse.Namespace) -> Path:
    secret_dir = tmp / "secrets"
    secret_dir.mkdir(mode=0o700)
    lines = ["[daemon]", f'database = "sqlite:///{tmp / "k.db"}"', 'listen = "127.0.0.1:0"',
             'log_level = "warning"', f'metrics_per_key = "{args.metrics_per_key}"',
             "[probe]", 'interval = "1h"', f"concurrency = {args.concurrency}", f"workers = {args.workers}",
             'timeout = "10s"', "jitter = 0", "spread = 0"]
    for i, s in enumerate(secrets):
        path = secret_dir / f"k{i}"
        path.write_text(s)
        lines += ["[[keys]]", f'name = "key-{i:06d}"', 'provider = "openai"', f'secret = "file:{path}"',
                  f'base_url = "{url}/openai/v1"', f'labels = {{ team = "t{i % 20}" }}']
    cfg = tmp / "k.toml"
    cfg.write_text("\n".join(lines))
    return cfg


async def run(args: argparse.Namespace) -> dict[str, float]:
    from keywatch import logging as kwlog
    from keywatch.daemon import Daemon

    kwlog.setup("console", "warning")
    # A stop (SIGTERM, as `timeout` or a CI runner sends) cancels the run, so the cleanup below still happens.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    f: dict[str, float] = {}
    tmp = Path(tempfile.mkdtemp(prefix="keywatch-bench-"))
    sim, url = start_simulator(args.latency_ms)
    daemon = None
    try:
        secrets = [bench_secret(i) for i in range(args.keys)]
        register_keys(url, secrets)
        floors = [floor(url, args.keys, args.concurrency)]
        cfg = write_config(tmp, url, secrets, args)
        del secrets
        gc.collect()
        f["rss_before_mb"], f["stack_mb"] = rss_mb(), stack_floor_mb()
        f.update({f"before_{k}": v for k, v in heap_mb().items()})

        daemon = Daemon(cfg)
        await daemon.start()
        daemon._scheduler.pause()  # the benchmark drives the cycles itself
        await asyncio.sleep(0)
        f["rss_started_mb"], f["peak_started_mb"] = rss_mb(), peak_rss_mb()
        walls, cpus, blocks = [], [], []
        first = 5 if args.cycles > 5 else 0  # the steady cycles: those after the first five
        for done in range(1, args.cycles + 1):
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            report = await daemon.cycle()
            walls.append(time.perf_counter() - t0)
            cpus.append((cpu_seconds() - cpu0) * 1000 / args.keys)
            if done > first and ((done - first) % BLOCK == 0 or done == args.cycles):
                # The floor again, between two blocks of cycles (the daemon idle, its last batch written).
                await asyncio.wrap_future(daemon._writer.submit())
                blocks.append(slice(blocks[-1].stop if blocks else first, done))
                floors.append(await asyncio.to_thread(floor, url, args.keys, args.concurrency, 1))
        healthy = sum(1 for st in report.seen(daemon.tracker.snapshot()) if str(st.health) == "healthy")
        steady = slice(first, None)
        f["first_cycle_s"], f["cycle_s"] = walls[0], statistics.median(walls[steady])
        f["cpu_ms"] = statistics.median(cpus[steady])
        # Each block of cycles against the floors run just before and just after it; the ratios' median.
        for name, series, which in (("cycle", walls, 0), ("cpu", cpus, 1)):
            f[f"{name}_ratio"] = statistics.median(
                statistics.median(series[b]) / ((floors[i][which] + floors[i + 1][which]) / 2)
                for i, b in enumerate(blocks))
        f["floor_s"], f["floor_cpu_ms"] = (statistics.median(x[i] for x in floors) for i in (0, 1))
        f["floor_cpu_min"], f["floor_cpu_max"] = min(x[1] for x in floors), max(x[1] for x in floors)
        f["floors"] = len(floors)
        f["healthy"] = healthy
        await asyncio.wrap_future(daemon._writer.submit())  # the last cycle's batch written: settled, idle
        gc.collect()
        f["rss_settled_mb"] = rss_mb()
        f.update({f"settled_{k}": v for k, v in heap_mb().items()})

        idle, f["scrape_bytes"], f["scrape_sent"] = await scrape(daemon.web_port, 2.0)
        f["scrape_first_s"], f["scrape_idle_s"] = idle[0], statistics.median(idle)
        plain, _, _ = await scrape(daemon.web_port, 1.0, "identity")
        f["scrape_plain_s"] = statistics.median(plain)
        scraper = asyncio.create_task(scrape(daemon.web_port, max(1.0, f["cycle_s"] * 0.8)))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await daemon.cycle()
        f["cycle_scraped_s"] = time.perf_counter() - t0
        during, _, _ = await scraper
        f["scrape_during_s"], f["scrape_during_max_s"] = statistics.median(during), max(during)
        f["scrapes_during"] = len(during)
        # A scraper at a steady interval, as Prometheus (every 15 s, here every PERIODIC s), over two cycles:
        # its first two scrapes show the interval, the ones after it are timed.
        periodic = asyncio.create_task(scrape(daemon.web_port, 2 * f["cycle_s"] + 2 * PERIODIC, every=PERIODIC))
        for _ in range(2):
            await daemon.cycle()
        steady_scrapes, _, _ = await periodic
        f["scrape_periodic_s"], f["scrape_periodic_max_s"] = (statistics.median(steady_scrapes[2:]),
                                                               max(steady_scrapes[2:]))
        f["scrapes_periodic"] = len(steady_scrapes) - 2
        # As in production, where /metrics is scraped every cycle: what the scrapes keep is part of the RSS.
        await scrape(daemon.web_port, 0.0)
        await asyncio.wrap_future(daemon._writer.submit())
        gc.collect()
        f["rss_scraped_mb"] = rss_mb()
        f["peak_rss_mb"] = peak_rss_mb()
        f["db_bytes"] = sum(p.stat().st_size for p in tmp.glob("k.db*"))
        return f
    finally:
        if daemon is not None:
            daemon.request_stop()
            await daemon.shutdown()
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    from keywatch.heap import steady_heap

    steady_heap()  # first, as `keywatch run` does
    from keywatch import aio

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", type=size_arg, default=10_000, help="fleet size: 1k, 10k, 50k, 100k or a number")
    p.add_argument("--cycles", type=int, default=20, help="full cycles (>= 20 for a steady state)")
    p.add_argument("--latency-ms", type=float, default=50)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--workers", type=int, default=1, help="probe.workers (processes that probe)")
    p.add_argument("--metrics-per-key", default="all", choices=["all", "minimal", "none"],
                   help="daemon.metrics_per_key")
    p.add_argument("--one-core", action="store_true",
                   help="run the daemon (and the floor) on one CPU, the simulator and the scraper on the others")
    args = p.parse_args()
    if args.one_core:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--one-core needs two CPUs: one for the daemon, the others for the simulator")
        ELSEWHERE.update(cpus[1:])
        os.sched_setaffinity(0, {cpus[0]})  # this process and what it starts (the floor) from now on
    try:
        f = aio.run(run(args))  # the event loop `keywatch run` uses
    except asyncio.CancelledError:
        raise SystemExit("stopped by SIGTERM; the temporary directory and the simulator are gone") from None
    n = args.keys
    cpus = "1 (the simulator and the scraper on the others)" if args.one_core else len(os.sched_getaffinity(0))
    print(f"keys={n} latency={args.latency_ms:g}ms concurrency={args.concurrency} workers={args.workers} loop={LOOP} "
          f"cycles={args.cycles} metrics_per_key={args.metrics_per_key} "
          f"cpus={cpus} secrets={len(bench_secret(0))} characters")
    print(f"floor (bare aiohttp, run {int(f['floors'])} times: before the daemon and after each {BLOCK} steady "
          f"cycles): {f['floor_s']:.2f}s  {f['floor_cpu_ms']:.3f} CPU-ms/probe (medians; CPU "
          f"{f['floor_cpu_min']:.3f}-{f['floor_cpu_max']:.3f})")
    print(f"keywatch steady cycle: {f['cycle_s']:.2f}s ({f['cycle_ratio']:.2f}x the floor)  "
          f"{f['cpu_ms']:.3f} CPU-ms/probe ({f['cpu_ratio']:.2f}x the floor)  "
          f"healthy={int(f['healthy'])}  first cycle {f['first_cycle_s']:.2f}s; each ratio is the median of "
          f"each {BLOCK} cycles' against the floors either side of them")
    budget = 60 + 2 * n / 1000
    print(f"RSS: settled {f['rss_settled_mb']:.0f} MB after {args.cycles} cycles (target {budget:.0f} MB = "
          f"60 MB + 2 KB/key), {f['rss_scraped_mb']:.0f} MB once /metrics was scraped, peak "
          f"{f['peak_rss_mb']:.0f} MB, after start-up {f['rss_started_mb']:.0f} MB "
          f"(peak by then {f['peak_started_mb']:.0f} MB; before the daemon {f['rss_before_mb']:.0f} MB)")
    if "settled_malloc_used" in f:
        grown = {k: (f[f"settled_{k}"] - f[f"before_{k}"]) * 1e6 / n / 1e3 for k in ("py_live", "py_free",
                                                                                 "malloc_used")}
        print(f"heap, settled: Python objects {f['settled_py_live']:.0f} MB live + {f['settled_py_free']:.0f} MB "
              f"free in the allocator's arenas, malloc {f['settled_malloc_used']:.0f} MB in use + "
              f"{f['settled_malloc_free']:.0f} MB free; per key since before the daemon: "
              f"{grown['py_live']:.2f} KB live objects, {grown['py_free']:.2f} KB free in arenas, "
              f"{grown['malloc_used']:.2f} KB malloc in use")
    print(f"RSS per key: {(f['rss_settled_mb'] - f['rss_before_mb']) * 1e3 / n:.2f} KB settled since before the "
          f"daemon, {(f['rss_scraped_mb'] - f['rss_before_mb']) * 1e3 / n:.2f} KB once scraped (target 2 KB); "
          f"fixed part: {f['rss_before_mb']:.0f} MB before the daemon (target 60 MB), of "
          f"which {f['stack_mb']:.0f} MB are the packages keywatch is built on, imported alone in a process")
    print(f"/metrics (gzip, as Prometheus asks): idle median {f['scrape_idle_s'] * 1000:.1f} ms (the first after the "
          f"cycle {f['scrape_first_s'] * 1000:.1f} ms), during a cycle median "
          f"{f['scrape_during_s'] * 1000:.1f} ms (max {f['scrape_during_max_s'] * 1000:.1f} ms, "
          f"{int(f['scrapes_during'])} scrapes), {f['scrape_bytes'] / 1e6:.2f} MB of text in "
          f"{f['scrape_sent'] / 1e6:.2f} MB; without gzip idle median {f['scrape_plain_s'] * 1000:.1f} ms; the "
          f"scraped cycle took {f['cycle_scraped_s']:.2f}s vs {f['cycle_s']:.2f}s")
    print(f"/metrics scraped every {PERIODIC:g} s during two cycles (as Prometheus, at its interval): median "
          f"{f['scrape_periodic_s'] * 1000:.1f} ms, max {f['scrape_periodic_max_s'] * 1000:.1f} ms "
          f"({int(f['scrapes_periodic'])} scrapes after the first two)")
    print(f"database: {f['db_bytes'] / 1e6:.1f} MB")
    print("targets (10k): cycle <= 1.1x floor, cpu <= 2x floor, settled RSS <= 60 MB + 2 KB/key, "
          "/metrics <= 50 ms idle and during a cycle")


if __name__ == "__main__":
    main()
