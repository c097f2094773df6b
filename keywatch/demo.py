"""`keywatch demo`: the real daemon against the built-in provider simulator, with a mixed fleet.

Nothing here is special to the demo but the fleet and the narration: the daemon, the adapters, the
HTTP traffic and the database (SQLite in a temporary directory) are the ones production uses.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keywatch import aio
from keywatch.domain import Transition

if TYPE_CHECKING:
    from keywatch.daemon import Daemon


@dataclass(frozen=True)
class DemoKey:
    name: str
    provider: str
    behaviour: str
    secret: str
    path: str  # simulator mount point of the provider
    probe: str = "models"
    extra: dict[str, Any] | None = None
    note: str = ""


def _secret(prefix: str, tag: str) -> str:
    body = (tag.replace("-", "") * 8)[:40]
    return f"{prefix}{body}DEMO"


FLEET: list[DemoKey] = [
    DemoKey("openai-search-prod", "openai", "healthy", _secret("sk-proj-", "search"), "/openai/v1",
            note="healthy"),
    DemoKey("openai-batch", "openai", "rate_limited", _secret("sk-proj-", "batch"), "/openai/v1",
            note="429 rate_limit_exceeded with x-ratelimit headers"),
    DemoKey("openai-intern", "openai", "quota_exhausted", _secret("sk-proj-", "intern"), "/openai/v1",
            probe="completion", note="429 insufficient_quota (seen by the 1-token completion probe)"),
    DemoKey("openai-old", "openai", "invalid", _secret("sk-proj-", "oldkey"), "/openai/v1",
            note="401 invalid_api_key: revoked"),
    DemoKey("openai-restricted", "openai", "missing_scope", _secret("sk-proj-", "restrict"), "/openai/v1",
            note="401 missing_scope: a restricted key"),
    DemoKey("vllm-local", "openai_compatible", "server_error", _secret("sk-", "vllmlocal"), "/openai/v1",
            note="500: the server is broken, the key is not blamed"),
    DemoKey("gateway-eu", "openai_compatible", "hang", _secret("sk-", "gatewayeu"), "/openai/v1",
            note="no answer: unreachable, the key is not blamed"),
    DemoKey("anthropic-support", "anthropic", "healthy", _secret("sk-ant-api03-", "support"), "/anthropic",
            note="healthy"),
    DemoKey("anthropic-labs", "anthropic", "quota_exhausted", _secret("sk-ant-api03-", "labs"), "/anthropic",
            note="400 credit balance is too low"),
    DemoKey("openrouter-proto", "openrouter", "healthy", "sk-or-v1-" + "ab12" * 16, "/openrouter/api/v1",
            note="healthy; usage and limit come with the probe"),
    DemoKey("deepseek-cn", "deepseek", "quota_exhausted", _secret("sk-", "deepseek"), "/deepseek",
            note="balance 0"),
    DemoKey("moonshot-kimi", "moonshot", "healthy", _secret("sk-", "moonshot"), "/moonshot/v1",
            note="healthy, positive balance"),
]

CANARY = "openai-search-prod"


def _available(fleet: list[DemoKey]) -> list[DemoKey]:
    """Only providers whose adapter and simulator routes exist in this build."""
    import importlib

    from keywatch.providers import registry

    out = []
    for k in fleet:
        try:
            registry.adapter_class(k.provider)
            importlib.import_module(f"keywatch.sim.routes.{k.provider.replace('_compatible', '')}")
        except ImportError:
            continue
        out.append(k)
    return out


def _port_free(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    with socket.socket() as s:
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def write_config(path: Path, sim_url: str, fleet: list[DemoKey], db: Path, listen: str, interval: str) -> None:
    lines = [
        "# Written by `keywatch demo`: the simulator's keys, SQLite in a temporary directory.",
        "[daemon]",
        f'database = "sqlite:///{db}"',
        f'listen = "{listen}"',
        'log_level = "warning"',
        "[probe]",
        f'interval = "{interval}"',
        "concurrency = 16",
        'timeout = "2s"',
        "jitter = 0",
        "",
    ]
    for i, k in enumerate(fleet):
        lines += [
            "[[keys]]",
            f'name = "{k.name}"',
            f'provider = "{k.provider}"',
            f'secret = "file:{path.parent / f"key-{i}.secret"}"',
            f'base_url = "{sim_url}{k.path}"',
            f'probe = "{k.probe}"',
            f'labels = {{ team = "{k.name.split("-")[1]}", env = "demo" }}',
            "",
        ]
    path.write_text("\n".join(lines))


def _print(line: str) -> None:
    print(line, flush=True)


NARRATED = ("action_done", "action_blocked", "pool_changed")


def run_demo(duration: float | None, interval: str = "5s", listen: str = "127.0.0.1:9464",
             verbose: bool = False) -> int:
    from keywatch import logging as kwlog
    from keywatch.daemon import Daemon
    from keywatch.sim.server import SimulatorThread

    workdir = Path(tempfile.mkdtemp(prefix="keywatch-demo-"))  # kept: the config, its log and database
    log_path = workdir / "keywatch.log"
    log_file = None
    if verbose:
        kwlog.setup("console", "info", stream=sys.stderr)
    else:
        log_file = log_path.open("a")
        kwlog.setup("console", "info", stream=log_file)
    fleet = _available(FLEET)
    if not _port_free(listen):
        host = listen.rpartition(":")[0]
        _print(f"{listen} is taken; serving metrics on a free port instead")
        listen = f"{host}:0"
    tmp = str(workdir)
    with SimulatorThread() as sim:
        for i, k in enumerate(fleet):
            secret_file = workdir / f"key-{i}.secret"
            secret_file.touch(mode=0o600)
            secret_file.write_text(k.secret)
            sim.set_key(k.secret, provider=k.provider, behaviour=k.behaviour, **(k.extra or {}))
        cfg = Path(tmp) / "keywatch.toml"
        write_config(cfg, sim.url, fleet, Path(tmp) / "keywatch.db", listen, interval)
        _print(f"keywatch demo: provider simulator at {sim.url}, {len(fleet)} keys of "
               f"{len({k.provider for k in fleet})} providers")
        _print(f"config: {cfg}   (try `keywatch check -c {cfg}` in another shell while the demo runs)")
        _print("log: " + ("on stderr (--verbose)" if verbose else f"{log_path} (--verbose prints it here)"))
        width = max(len(k.name) for k in fleet)
        for k in fleet:
            _print(f"  {k.name.ljust(width)}  {k.provider:<18} simulator: {k.note}")
        daemon = Daemon(cfg)
        started = time.monotonic()

        def on_transition(t: Transition) -> None:
            at = time.monotonic() - started
            detail = f" ({t.error_code})" if t.error_code else ""
            _print(f"[{at:6.1f}s] {t.key.ljust(width)}  {t.old} -> {t.new}{detail}")

        daemon.runtime.on_transition(on_transition)
        _narrate_actions(daemon, started)
        try:
            code = aio.run(_drive(daemon, sim, duration, fleet))
        finally:
            if log_file is not None:
                log_file.close()
    _print("what to try next:")
    _print(f"  keywatch events -c {cfg}        the audit trail of this run (the database is kept)")
    _print(f"  keywatch status -c {cfg}        each key as the daemon recorded it")
    _print(f"  keywatch config validate -c {cfg}")
    _print("  keywatch demo --verbose          the same, with the daemon's log on the terminal")
    _print("  your own keys: copy config/keywatch.example.toml, then `keywatch check -c FILE`")
    return code


def _narrate_actions(daemon: Daemon, started: float) -> None:
    """One line per disable, block, re-enable and pool change, as the audit trail records them."""
    events = daemon.runtime.events
    record, write = events.record, events.write

    def say(event: Any) -> None:
        if event.kind in NARRATED:
            at = time.monotonic() - started
            _print(f"[{at:6.1f}s] {event.kind.replace('_', ' ')}: {event.message}")

    def narrated_record(event: Any) -> None:
        say(event)
        record(event)

    async def narrated_write(event: Any) -> None:
        say(event)
        await write(event)

    events.record = narrated_record  # type: ignore[method-assign]
    events.write = narrated_write  # type: ignore[method-assign]


async def _drive(daemon: Daemon, sim: Any, duration: float | None, fleet: list[DemoKey]) -> int:
    runner = asyncio.create_task(daemon.run())
    while daemon.web_port is None and not runner.done():
        await asyncio.sleep(0.05)
    if runner.done():
        return runner.result()
    host = daemon.inventory.config.daemon.listen.rpartition(":")[0]
    _print(f"metrics: http://{host}:{daemon.web_port}/metrics   readiness: http://{host}:{daemon.web_port}/readyz")
    _print("press Ctrl-C to stop" if duration is None else f"running for {duration:g}s")
    deadline = None if duration is None else time.monotonic() + duration
    canary = next((k for k in fleet if k.name == CANARY), None)
    revoked = restored = False
    while not runner.done():
        await asyncio.sleep(0.2)
        if canary and not revoked and daemon.cycles >= 2:
            _print(f"[demo] revoking {canary.name} at the provider (simulator) ...")
            sim.set_key(canary.secret, provider=canary.provider, behaviour="invalid")
            revoked = True
        elif canary and revoked and not restored and daemon.cycles >= 4:
            _print(f"[demo] a new secret for {canary.name} is in place (simulator) ...")
            sim.set_key(canary.secret, provider=canary.provider, behaviour="healthy")
            restored = True
        if deadline is not None and time.monotonic() >= deadline:
            daemon.request_stop()
            break
    code = await runner
    snapshot = daemon.tracker.snapshot()
    counts: dict[str, int] = {}
    for st in snapshot.values():
        counts[str(st.health)] = counts.get(str(st.health), 0) + 1
    _print("final health: " + ", ".join(f"{h}={n}" for h, n in sorted(counts.items())))
    return code
