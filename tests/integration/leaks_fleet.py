"""Daemons as processes with the leak receivers on, OpenRouter keys (deactivatable through the management
key), against the session simulator (which also plays GitHub) and a webhook alert sink: for the cluster and
kill -9 tests of containment."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keywatch.sim.routes import github as gh
from tests.integration.conftest import free_port
from tests.integration.daemon_process import DaemonProcess
from tests.integration.leaks_harness import GENERIC_TOKEN, GITHUB_TOKEN, HOOK_SECRET, MANAGEMENT, router_secret
from tests.integration.leaks_harness import write_config as leak_config

ALERTS = (
    '\n[alerts]\ngroup_wait = "0s"\nretry_base = "200ms"\nretry_max = "400ms"\n'
    '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_LEAKFLEET_HOOK"\n'
    'secret = "env:KW_LEAKFLEET_HMAC"\n'
)


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


Daemon = DaemonProcess


@dataclass
class LeakFleet:
    sim: Any  # the session SimulatorThread
    tmp: Path
    database: str  # a URL: sqlite:///... or postgresql+psycopg://...
    tag: str
    n: int = 4
    secrets: dict[str, str] = field(default_factory=dict)
    daemons: dict[str, Daemon] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.secrets = {f"k{i}": router_secret(i, self.tag) for i in range(self.n)}
        for i, (name, s) in enumerate(self.secrets.items()):
            digest = hashlib.sha256(f"{self.tag}{i}".encode()).hexdigest()
            self.sim.set_key(s, "openrouter", "healthy", hash=digest, name=name)
        self.sim.set_key(MANAGEMENT, "openrouter", "healthy", admin=True)
        gh.data(self.sim.state)["token"] = GITHUB_TOKEN

    def add(self, name: str, receiver_url: str, cluster: bool = True) -> Daemon:
        port = free_port()
        where = self.tmp / name
        where.mkdir(exist_ok=True)
        extra = ALERTS
        if cluster:
            extra += f'\n[cluster]\ninstance = "{name}"\nheartbeat = "200ms"\ntakeover_timeout = "2s"\n'
        path = leak_config(where, self.sim.url, self.secrets, extra, self.tag)
        text = path.read_text().replace(f'"sqlite:///{where / "kw.db"}"', f'"{self.database}"')
        path.write_text(text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"'))
        self.env = {**os.environ, "KW_LEAKFLEET_HOOK": receiver_url, "KW_LEAKFLEET_HMAC": "hmac-" + "h" * 24}
        d = Daemon(name, port, path, where / "daemon.log")
        self.daemons[name] = d
        return d

    def disable_calls(self, key: str) -> int:
        return int(self.sim.state.keys[self.secrets[key]].extra.get("disable_calls", 0))

    def github_webhook(self, key: str, number: int, repo: str = "acme/fleet") -> tuple[bytes, dict[str, str]]:
        payload = gh.plant_alert(self.sim.state, repo, number, self.secrets[key])
        return gh.webhook(HOOK_SECRET, payload)

    def generic(self, key: str, location: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps({"secret": self.secrets[key], "location": location, "scanner": "gitleaks"}).encode()
        return body, {"Content-Type": "application/json", "Authorization": f"Bearer {GENERIC_TOKEN}"}

    def stop(self) -> None:
        for d in self.daemons.values():
            d.stop()


def compromised_alerts(rx: Any, key: str) -> int:
    """Firing `compromised:<key>` alerts delivered, each delivery id counted once."""
    seen: set[str] = set()
    n = 0
    for r in rx.accepted():
        did = r.headers.get("webhook-id") or r.headers.get("Webhook-Id")
        if did in seen:
            continue
        seen.add(did)
        for a in r.json().get("alerts", []):
            if a.get("firing") and a.get("identity") == f"compromised:{key}":
                n += 1
    return n
