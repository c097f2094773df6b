"""A real daemon with the leak receivers on, ten OpenRouter keys (deactivatable through the management key)
in a file pool, against the in-process simulator (which also plays GitHub)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from keywatch.daemon import Daemon
from keywatch.domain import AdminState, Alert
from keywatch.metrics import Metrics
from keywatch.sim.routes import github as gh
from keywatch.sim.server import Simulator

MANAGEMENT = "sk-or-v1-" + "ad41" * 16
HOOK_SECRET = "It's a Secret to Everybody"
GITHUB_TOKEN = "ghp_" + "T0kenForTheSimulator" * 2
GENERIC_TOKEN = "kw-leak-intake-" + "q7" * 12
GENERIC_HMAC = "kw-leak-hmac-" + "z9" * 12


def router_secret(i: int, tag: str) -> str:
    return "sk-or-v1-" + hashlib.sha256(f"{tag}{i:04d}".encode()).hexdigest()


@dataclass
class LeakHarness:
    sim: Simulator
    daemon: Daemon
    secrets: dict[str, str]
    pool: Path
    alerts: list[Alert] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.web_port}"

    @property
    def leaks(self) -> Any:
        return self.daemon.capabilities["leaks"]

    async def cycles(self, n: int = 1) -> None:
        for _ in range(n):
            await self.daemon.cycle()

    def disabled_at_provider(self, name: str) -> bool:
        return bool(self.sim.state.keys[self.secrets[name]].extra.get("disabled"))

    def admin(self, name: str) -> str:
        return str(self.daemon.tracker.snapshot()[name].admin_state)

    def pooled(self) -> set[str]:
        """The key names in the pool file."""
        if not self.pool.exists():
            return set()
        return {m["name"] for m in json.loads(self.pool.read_text())["keys"]}

    def alerts_for(self, identity: str) -> list[Alert]:
        return [a for a in self.alerts if a.identity == identity]

    def sample(self, metric: str, labels: dict[str, str] | None = None) -> float | None:
        return self.daemon.metrics.registry.get_sample_value(metric, labels or {})

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.post(self.url + path, data=body, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text

    async def github_leak(self, name: str, number: int, repo: str = "acme/shop", **kw: Any) -> tuple[int, Any]:
        payload = gh.plant_alert(self.sim.state, repo, number, self.secrets[name], **kw)
        body, headers = gh.webhook(HOOK_SECRET, payload)
        return await self.post("/hooks/github/secret-scanning", body, headers)


def write_config(
    tmp: Path, sim_url: str, secrets: dict[str, str], extra: str, tag: str, leaks: str = "", timeout: str = "2s"
) -> Path:
    os.environ[f"KW_LEAK_{tag}_MGMT"] = MANAGEMENT
    os.environ[f"KW_LEAK_{tag}_HOOK"] = HOOK_SECRET
    os.environ[f"KW_LEAK_{tag}_GH"] = GITHUB_TOKEN
    os.environ[f"KW_LEAK_{tag}_GEN"] = GENERIC_TOKEN
    os.environ[f"KW_LEAK_{tag}_HMAC"] = GENERIC_HMAC
    lines = [
        "[daemon]",
        f'database = "sqlite:///{tmp / "kw.db"}"',
        'listen = "127.0.0.1:0"',
        "[probe]",
        'interval = "1h"',
        f'timeout = "{timeout}"',
        "jitter = 0",
        "spread = 0",
        "",
        "[[accounts]]",
        'name = "or"',
        'provider = "openrouter"',
        f'admin_secret = "env:KW_LEAK_{tag}_MGMT"',
        f'base_url = "{sim_url}/openrouter/api/v1"',
        "",
    ]
    for i, (n, s) in enumerate(secrets.items()):
        os.environ[f"KW_LEAK_{tag}_{i}"] = s
        lines += [
            "[[keys]]",
            f'name = "{n}"',
            'provider = "openrouter"',
            f'secret = "env:KW_LEAK_{tag}_{i}"',
            f'base_url = "{sim_url}/openrouter/api/v1"',
            'account = "or"',
            "",
        ]
    lines += [
        "[[pools]]",
        'name = "router"',
        f'file = {{ path = "{tmp / "pool.json"}", format = "json" }}',
        "",
        "[leaks]",
        "max_body = 65536",
        leaks.replace("{sim}", sim_url),
        "[leaks.github]",
        f'webhook_secret = "env:KW_LEAK_{tag}_HOOK"',
        f'token = "env:KW_LEAK_{tag}_GH"',
        f'api_url = "{sim_url}/github"',
        "[leaks.partner]",
        f'public_keys_url = "{sim_url}/github/meta/public_keys/secret_scanning"',
        "[leaks.generic]",
        f'token = "env:KW_LEAK_{tag}_GEN"',
        f'hmac_secret = "env:KW_LEAK_{tag}_HMAC"',
        "",
    ]
    path = tmp / "keywatch.toml"
    path.write_text("\n".join(lines) + "\n" + extra.replace("{sim}", sim_url))
    return path


async def start(
    tmp: Path,
    n: int = 10,
    *,
    dead: int = 0,
    extra: str = "",
    tag: str = "A",
    prepare: Callable[[Simulator], None] | None = None,
    leaks: str = "",
    timeout: str = "2s",
) -> LeakHarness:
    """`extra` is appended to the config, `leaks` goes into its [leaks] table; `{sim}` is the simulator's URL;
    `timeout` is probe.timeout (provider calls too). `dead` keys answer 401 and are disabled by keywatch as
    dead (the built-in policy, and the store for any the blast radius holds back) before the test begins."""
    sim = Simulator()
    await sim.start()
    secrets = {f"k{i}": router_secret(i, tag) for i in range(n)}
    for i, (name, s) in enumerate(secrets.items()):
        sim.set_key(s, "openrouter", "invalid" if i < dead else "healthy", hash=f"{i:02d}" + "ab" * 31, name=name)
    sim.set_key(MANAGEMENT, "openrouter", "healthy", admin=True)
    gh.data(sim.state)["token"] = GITHUB_TOKEN
    if prepare is not None:
        prepare(sim)
    path = write_config(tmp, sim.url or "", secrets, extra, tag, leaks, timeout)
    daemon = Daemon(path, metrics=Metrics(CollectorRegistry()))
    await daemon.start()
    assert daemon.scheduler is not None
    daemon.scheduler.remove_job("probe")
    h = LeakHarness(sim, daemon, secrets, tmp / "pool.json")

    async def capture(alert: Alert) -> None:
        h.alerts.append(alert)

    daemon.runtime.alerts.attach(capture)
    if dead:
        await h.cycles(3)
        for name in list(secrets)[:dead]:
            st = daemon.tracker.snapshot()[name]
            if st.admin_state.value != "disabled":  # held back by the fleet share: recorded as keywatch's own
                await asyncio.to_thread(
                    daemon.store.write_admin,
                    replace(st, admin_state=AdminState.DISABLED),
                    "default-disable-invalid",
                    "invalid for 3 probes in a row",
                    datetime.now(UTC),
                )
        await h.cycles(1)
    return h


async def stop(h: LeakHarness) -> None:
    await h.leaks.idle()
    await h.daemon.shutdown()
    await h.sim.stop()
