"""Thirty keys whose provider is hostile (huge, gzip bomb, endless, slowloris, deep nesting, a redirect away;
five of each, across every provider) probed for several cycles by a real daemon: its memory stays bounded,
/healthz keeps answering, no hostile answer blames a key or passes as healthy, the healthy keys stay healthy
and nothing is disabled."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keywatch.sim.server import SimulatorThread
from keywatch.sim.state import HOSTILE
from tests.faults.support import wait_for
from tests.integration.conftest import free_port, toml_config, unique_secret

pytestmark = pytest.mark.slow

CYCLES = 4
RSS_LIMIT_MB = 300
PROVIDERS = ["openai", "anthropic", "openrouter", "deepseek", "moonshot", "azure_openai", "aws_bedrock"]
ROUTES = {
    "openai": {"base_url": "{sim}/openai/v1"},
    "anthropic": {"base_url": "{sim}/anthropic"},
    "openrouter": {"base_url": "{sim}/openrouter/api/v1"},
    "deepseek": {"base_url": "{sim}/deepseek"},
    "moonshot": {"base_url": "{sim}/moonshot/v1"},
    "azure_openai": {"endpoint": "{sim}/azure/aoai-hostile"},
    "aws_bedrock": {"base_url": "{sim}/aws/bedrock"},
}
METRIC = re.compile(r'^keywatch_key_(health|admin_state)\{key="([^"]+)",provider="[^"]*",(?:health|state)="([a-z_]+)"'
                    r"\} 1(?:\.0)?$", re.M)


def run(cfg: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)




def secret_for(provider: str) -> str:
    return unique_secret("ABSK" if provider == "aws_bedrock" else "sk-proj-")


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class HealthzWatch(threading.Thread):
    """Asks /healthz every 100 ms; records the slowest answer and every failure to answer within 1 s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.slowest = 0.0
        self.asked = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1.0)
            try:
                conn.request("GET", "/healthz")
                status = conn.getresponse().status
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            except OSError as exc:
                self.failures.append(type(exc).__name__)
            finally:
                conn.close()
            took = time.monotonic() - started
            self.asked += 1
            self.slowest = max(self.slowest, took)
            if took > 1.0:
                self.failures.append(f"{took:.2f}s")
            self.stop.wait(0.1)


def scrape(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_thirty_hostile_keys_cost_bounded_memory_and_blame_no_key(sim: SimulatorThread, tmp_path: Path,
                                                                  figure) -> None:
    keys, env, behaviour_of = [], {}, {}
    plan = [(b, PROVIDERS[(i * 5 + j) % len(PROVIDERS)]) for i, b in enumerate(sorted(HOSTILE)) for j in range(5)]
    plan += [("healthy", p) for p in PROVIDERS]
    for n, (behaviour, provider) in enumerate(plan):
        name = f"{behaviour}-{n:02d}-{provider}"
        secret = secret_for(provider)
        sim.set_key(secret, provider=provider, behaviour=behaviour)
        var = f"KW_HOSTILE_{n:02d}"
        env[var] = secret
        behaviour_of[name] = behaviour
        keys.append({"name": name, "provider": provider, "secret": f"env:{var}",
                     **{k: v.format(sim=sim.url) for k, v in ROUTES[provider].items()}})
    assert sum(b != "healthy" for b in behaviour_of.values()) == 30
    port = free_port()
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="1s", timeout="2s",
                               concurrency=64, extra="\n[safety]\ndisable_after_probes = 1\n"))
    env.update({k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ})
    log = tmp_path / "daemon.log"
    started = time.monotonic()
    daemon = run(cfg, env, log)
    watch = HealthzWatch(port)
    try:
        wait_for(lambda: b"ok" in _healthz(port), "the daemon's /healthz", timeout=20)
        baseline_mb = status_kb(daemon.pid, "VmRSS") / 1024
        watch.start()
        cycles: set[str] = set()

        def cycled() -> bool:
            text = scrape(port)
            m = re.search(r"^keywatch_last_cycle_timestamp_seconds (\S+)$", text, re.M)
            if m and float(m.group(1)) > 0:
                cycles.add(m.group(1))
            return len(cycles) >= CYCLES

        wait_for(cycled, f"{CYCLES} probe cycles", timeout=40)
        peak_mb = status_kb(daemon.pid, "VmHWM") / 1024
        text = scrape(port)
    finally:
        watch.stop.set()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
    watch.join(5)
    elapsed = time.monotonic() - started
    assert code == 0, log.read_text()[-3000:]
    health = {k: v for family, k, v in METRIC.findall(text) if family == "health"}
    admin = {k: v for family, k, v in METRIC.findall(text) if family == "admin_state"}
    assert set(health) == set(behaviour_of), sorted(set(behaviour_of) - set(health))
    wrong = {k: health[k] for k, b in behaviour_of.items()
             if (b == "healthy") != (health[k] == "healthy")
             or (b != "healthy" and health[k] not in ("provider_error", "unreachable"))}
    assert not wrong, wrong
    assert all(v == "active" for v in admin.values()), {k: v for k, v in admin.items() if v != "active"}
    assert not watch.failures, watch.failures[:10]
    assert peak_mb < RSS_LIMIT_MB, f"peak RSS {peak_mb:.0f} MB"
    for secret in (s for k, s in env.items() if k.startswith("KW_HOSTILE_")):
        assert secret not in log.read_text()
    by_health = {h: sum(1 for k, v in health.items() if v == h and behaviour_of[k] != "healthy")
                 for h in ("provider_error", "unreachable")}
    figure("30 hostile keys, real daemon",
           f"{len(cycles)} cycles in {elapsed:.0f}s; peak RSS {peak_mb:.0f} MB (at start {baseline_mb:.0f} MB, "
           f"limit {RSS_LIMIT_MB}); /healthz slowest {watch.slowest * 1000:.0f} ms over {watch.asked} asks; "
           f"hostile keys {by_health['provider_error']} provider_error + {by_health['unreachable']} unreachable, "
           f"{sum(b == 'healthy' for b in behaviour_of.values())} healthy keys healthy, 0 disabled")


def _healthz(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().read()
    except OSError:
        return b""
    finally:
        conn.close()
