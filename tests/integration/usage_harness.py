"""A real daemon with the usage extension against the in-process simulator; pulls are driven by the test."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from keywatch.daemon import Daemon
from keywatch.domain import Alert
from keywatch.metrics import Metrics
from keywatch.sim.routes.usage_openai import set_fixtures
from keywatch.sim.server import Simulator


@dataclass
class UsageHarness:
    sim: Simulator
    daemon: Daemon
    tmp: Path
    alerts: list[Alert] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.sim.url or ""

    async def pull(self, now: datetime) -> Any:
        return await self.daemon.capabilities["usage"].run(now)

    def fixtures(self, provider: str, **fields: Any) -> None:
        set_fixtures(self.sim.state, provider, **fields)

    def sample(self, metric: str, labels: dict[str, str]) -> float | None:
        return self.daemon.metrics.registry.get_sample_value(metric, labels)

    def alerts_for(self, identity: str) -> list[Alert]:
        return [a for a in self.alerts if a.identity == identity]

    @property
    def config(self) -> Path:
        return self.tmp / "keywatch.toml"


def env_secret(name: str, value: str) -> str:
    os.environ[name] = value
    return f"env:{name}"


async def start(tmp: Path, body: str, sim: Simulator | None = None) -> UsageHarness:
    """`body` is the [[accounts]]/[[keys]]/[[budgets]] part; {sim} in it is replaced by the simulator URL."""
    if sim is None:
        sim = Simulator()
        await sim.start()
    head = "\n".join([
        "[daemon]", f'database = "sqlite:///{tmp / "kw.db"}"', 'listen = "127.0.0.1:0"',
        "[probe]", 'interval = "1h"', 'timeout = "5s"', "jitter = 0", "spread = 0", "",
    ])
    (tmp / "keywatch.toml").write_text(head + "\n" + body.replace("{sim}", sim.url or "") + "\n")
    daemon = Daemon(tmp / "keywatch.toml", metrics=Metrics(CollectorRegistry()))
    await daemon.start()
    assert daemon.scheduler is not None
    daemon.scheduler.remove_job("probe")  # no cycle, so no usage job either: the test drives the pulls
    h = UsageHarness(sim, daemon, tmp)

    async def capture(alert: Alert) -> None:
        h.alerts.append(alert)

    daemon.runtime.alerts.attach(capture)
    return h


async def stop(h: UsageHarness) -> None:
    await h.daemon.shutdown()
    await h.sim.stop()


def cli(*argv: Any) -> int:
    from keywatch.cli import main

    return main([str(a) for a in argv])
