"""A real daemon (store, adapters, extensions) driven cycle by cycle against the in-process simulator."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from keywatch.daemon import Daemon
from keywatch.domain import Alert
from keywatch.metrics import Metrics
from keywatch.sim.server import Simulator


def secret(i: int, tag: str = "pol") -> str:
    return f"sk-proj-{tag}{i:04d}" + "x" * 32 + "TEST"


@dataclass
class Harness:
    sim: Simulator
    daemon: Daemon
    secrets: dict[str, str]
    alerts: list[Alert] = field(default_factory=list)
    config_path: Path | None = None

    async def cycles(self, n: int = 1) -> None:
        for _ in range(n):
            await self.daemon.cycle()

    def set(self, name: str, behaviour: str) -> None:
        self.sim.set_key(self.secrets[name], "openai", behaviour)

    def admin(self, name: str) -> str:
        return str(self.daemon.tracker.snapshot()[name].admin_state)

    def sample(self, metric: str, labels: dict[str, str]) -> float | None:
        return self.daemon.metrics.registry.get_sample_value(metric, labels)

    def alerts_for(self, identity: str) -> list[Alert]:
        return [a for a in self.alerts if a.identity == identity]


def write_config(
    tmp: Path, sim_url: str, names: list[str], extra: str = "", tag: str = "pol"
) -> dict[str, str]:
    secrets = {}
    lines = [
        "[daemon]",
        f'database = "sqlite:///{tmp / "kw.db"}"',
        'listen = "127.0.0.1:0"',
        "[probe]",
        'interval = "1h"',
        'timeout = "2s"',
        "jitter = 0",
        "spread = 0",
        "",
    ]
    for i, n in enumerate(names):
        env = f"KW_POLICY_TEST_{tag.upper()}_{i}"
        secrets[n] = secret(i, tag)
        os.environ[env] = secrets[n]
        lines += [
            "[[keys]]",
            f'name = "{n}"',
            'provider = "openai"',
            f'secret = "env:{env}"',
            f'base_url = "{sim_url}/openai/v1"',
            f'labels = {{ team = "t{i % 2}" }}',
            "",
        ]
    (tmp / "keywatch.toml").write_text("\n".join(lines) + "\n" + extra.replace("{sim}", sim_url))
    return secrets


async def start(
    tmp: Path, names: list[str], behaviours: dict[str, str] | None = None, extra: str = "", tag: str = "pol"
) -> Harness:
    sim = Simulator()
    await sim.start()
    secrets = write_config(tmp, sim.url or "", names, extra, tag)
    for n, s in secrets.items():
        sim.set_key(s, "openai", (behaviours or {}).get(n, "healthy"))
    daemon = Daemon(tmp / "keywatch.toml", metrics=Metrics(CollectorRegistry()))
    await daemon.start()
    assert daemon.scheduler is not None
    daemon.scheduler.remove_job("probe")  # cycles are driven by the test, one at a time
    h = Harness(sim, daemon, secrets, config_path=tmp / "keywatch.toml")

    async def capture(alert: Alert) -> None:
        h.alerts.append(alert)

    daemon.runtime.alerts.attach(capture)
    return h


async def stop(h: Harness) -> None:
    await h.daemon.shutdown()
    await h.sim.stop()


def cli(*argv: Any) -> Any:
    from keywatch.cli import main

    return main([str(a) for a in argv])
