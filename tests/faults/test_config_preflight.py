"""Configs that pass a look but cannot run: `config validate` refuses what is knowable without starting,
and `run` refuses it (and an address already in use) before any side effect: exit 2, one line naming the
field and the fix, no traceback, no database file, no migration."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.faults.cli_runs import base_env, keywatch_many

pytestmark = pytest.mark.slow

CASES = {
    # name: (the [daemon] / [alerts] lines, the field named, words of the fix, knowable by validate)
    "listen not an address": ('listen = "999.1.1.1:9464"', "daemon.listen", "expected an IP address", True),
    "database of an unknown kind": ('listen = "127.0.0.1:0"\ndatabase = "mongodb://db.internal/keywatch"',
                                    "daemon.database", "expected sqlite:///", True),
    "sink reference that does not resolve": (
        'listen = "127.0.0.1:0"\n[[alerts.sinks]]\nname = "ops"\ntype = "slack"\nurl = "env:KW_FAULT_NO_SUCH_VAR"',
        "alerts.sinks[0].url", "fix the reference", True),
    "listen port in use": (None, "daemon.listen", "set another host:port", False),
}


def _config(tmp: Path, name: str, body: str) -> tuple[Path, Path]:
    """`body` continues a [daemon] table; a SQLite database in the case's own directory unless it sets one."""
    d = tmp / name.replace(" ", "-")
    d.mkdir()
    database = "" if "database =" in body else f'database = "sqlite:///{d / "k.db"}"\n'
    cfg = d / "keywatch.toml"
    cfg.write_text(f"[daemon]\n{database}{body}\n")
    return cfg, d


def test_bad_configs_refused_before_any_side_effect(tmp_path: Path, figure) -> None:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    try:
        configs = {}
        for name, (body, *_rest) in CASES.items():
            configs[name] = _config(tmp_path, name, body if body is not None else f'listen = "127.0.0.1:{port}"')
        env = base_env()
        jobs = [(["config", "validate", "-c", str(cfg)], env, d) for cfg, d in configs.values()]
        jobs += [(["run", "-c", str(cfg)], env, d) for cfg, d in configs.values()]
        outcomes = keywatch_many(jobs, timeout=20)
    finally:
        held.close()
    n = len(CASES)
    refused_by_validate = refused_by_run = 0
    for i, (name, (_body, field, fix, knowable)) in enumerate(CASES.items()):
        cfg, d = configs[name]
        validate, run = outcomes[i], outcomes[n + i]
        for outcome in (validate, run) if knowable else (run,):
            assert outcome.returncode == 2, (name, outcome)
            assert not outcome.traceback, (name, outcome.output)
            naming = [ln for ln in outcome.output.splitlines() if field in ln]
            assert len(naming) == 1, (name, outcome.output)
            assert str(cfg.name) in naming[0] and fix in naming[0], (name, naming[0])
        if knowable:
            refused_by_validate += 1
        else:
            assert validate.returncode == 0, (name, validate.output)
            assert f"127.0.0.1:{port}" in run.output and "already in use" in run.output, run.output
        refused_by_run += 1
        assert not list(d.glob("k.db*")), f"{name}: run created the database before refusing"
        assert "migrated" not in run.output, name
    figure("bad configs before start", f"{refused_by_validate}/{n - 1} refused by validate, {refused_by_run}/{n} by "
           "run before any side effect (exit 2, field named, no database file, 0 tracebacks)")
