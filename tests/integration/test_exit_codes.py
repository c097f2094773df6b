"""The exit-code table: the same in docs/cli.md and in `--help`, and true for every command, run as real
processes against the simulator (a real HTTP server) and a real SQLite database.

Also the start-up and command errors of the table's code 2: each names the setting and the fix, in one line,
without a traceback; commands that only read never create a database file; a closed pipe ends quietly.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keywatch.cli import build_parser
from keywatch.cli.common import EXIT_ATTENTION, EXIT_CODES, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE, EXIT_USAGE
from tests.faults.cli_runs import Outcome, base_env, keywatch, keywatch_forked
from tests.integration.conftest import free_port, toml_config, unique_secret

ROOT = Path(__file__).resolve().parents[2]
CLI_PAGE = ROOT / "docs" / "cli.md"


def documented_codes() -> dict[int, str]:
    text = CLI_PAGE.read_text()
    section = text[text.index("## Exit codes and conventions"):]
    section = section[: section.index("\n## ", 4)]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| `(\d+)` \| (.+?) \|$", section, re.M)}


def test_one_exit_code_table_in_the_docs_and_in_help():
    documented = documented_codes()
    assert set(documented) == set(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert documented[code].startswith(meaning), (code, documented[code], meaning)
    top = build_parser().format_help()
    listed = {int(m.group(1)): m.group(2) for m in re.finditer(r"^  (\d+) +(.+)$", top[top.index("exit codes:"):],
                                                               re.M)}
    assert set(listed) == set(EXIT_CODES)
    for code, meaning in EXIT_CODES.items():
        assert listed[code].startswith(meaning)


# -- the table, command by command -----------------------------------------------------------------------
@pytest.fixture
def fleet(sim, tmp_path: Path):
    """A config with a healthy openai key and an anthropic key without a management account; a second
    config whose openai key is invalid. Both with a database path that does not exist yet."""
    good, bad, ant = unique_secret(), unique_secret(), unique_secret("sk-ant-api03-")
    sim.set_key(good, provider="openai", behaviour="healthy")
    sim.set_key(bad, provider="openai", behaviour="invalid")
    sim.set_key(ant, provider="anthropic", behaviour="healthy")
    db = tmp_path / "k.db"
    keys = [
        {"name": "openai-main", "provider": "openai", "secret": "env:KW_GOOD", "base_url": f"{sim.url}/openai/v1"},
        {"name": "claude", "provider": "anthropic", "secret": "env:KW_ANT", "base_url": f"{sim.url}/anthropic"},
    ]
    sink = ('\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\n')
    (tmp_path / "ok.toml").write_text(toml_config(keys, db=db, extra=sink))
    bad_keys = [{**keys[0], "name": "openai-old", "secret": "env:KW_BAD"}]
    (tmp_path / "bad-key.toml").write_text(toml_config(bad_keys, db=db))
    (tmp_path / "broken.toml").write_text(toml_config(keys, db=db).replace('interval = "2s"', 'interval = "soon"'))
    env = base_env(KW_GOOD=good, KW_BAD=bad, KW_ANT=ant, KW_HOOK=f"http://127.0.0.1:{free_port()}/x")
    return tmp_path, db, env


def seed_unhealthy(db: Path) -> None:
    from keywatch.domain import Health, KeyState
    from keywatch.store.repo import Store

    store = Store(f"sqlite:///{db}")
    try:
        now = datetime.now(UTC)
        store.save_cycle([KeyState("openai-main", "openai", "fp", "sk-...x", Health.INVALID, health_since=now,
                                   last_probe_at=now, consecutive=3)], [], [])
    finally:
        store.dispose()


# (command, config, expected code, what the output must say); run in phases, each phase's commands at once.
BEFORE_DATABASE = [
    ([], None, EXIT_USAGE, "usage: keywatch"),
    (["--version"], None, EXIT_OK, "keywatch "),
    (["check"], "ok.toml", EXIT_OK, "openai-main"),
    (["check", "--json"], "bad-key.toml", EXIT_ATTENTION, "invalid"),
    (["check", "--key", "nope"], "ok.toml", EXIT_USAGE, "nope"),
    (["config", "validate"], "ok.toml", EXIT_OK, "ok (2 keys"),
    (["config", "validate"], "broken.toml", EXIT_USAGE, "probe.interval"),
    (["config", "schema"], None, EXIT_OK, '"$schema"'),
    (["status"], "ok.toml", EXIT_USAGE, "daemon.database"),
    (["events"], "ok.toml", EXIT_USAGE, "daemon.database"),
    (["usage"], "ok.toml", EXIT_USAGE, "daemon.database"),
    (["policy", "test"], "ok.toml", EXIT_USAGE, "daemon.database"),
    (["run"], "broken.toml", EXIT_USAGE, "probe.interval"),
    (["demo", "--duration", "soon"], None, EXIT_USAGE, "--duration"),
    (["alert", "test", "--sink", "nope"], "ok.toml", EXIT_USAGE, "no sink named 'nope'"),
    (["alert", "test"], "ok.toml", EXIT_ATTENTION, "hook"),  # nothing listens at the webhook's port
    (["silence", "add", "--match", "key=openai-main", "--for", "soon", "--reason", "r"], "ok.toml", EXIT_USAGE,
     "--for"),
    (["disable", "nope", "--reason", "r"], "ok.toml", EXIT_USAGE, "nope"),
]
WITH_DATABASE = [
    (["db", "upgrade"], "ok.toml", EXIT_OK, "applied 0001"),
    (["status"], "ok.toml", EXIT_ATTENTION, "invalid"),
    (["status", "--json"], "bad-key.toml", EXIT_ATTENTION, '"in_config": false'),
    (["events"], "ok.toml", EXIT_OK, ""),
    (["usage"], "ok.toml", EXIT_OK, "no usage recorded"),
    (["policy", "test"], "ok.toml", EXIT_OK, ""),
    (["silence", "remove", "999999"], "ok.toml", EXIT_USAGE, "no silence 999999"),
    (["rotations"], "ok.toml", EXIT_OK, ""),
    (["rotate", "nope"], "ok.toml", EXIT_USAGE, "nope"),
]
ADMIN = [  # in order: each changes the database (or reads what the one before wrote)
    (["silence", "add", "--match", "key=openai-main", "--for", "1h", "--reason", "r"], "ok.toml", EXIT_OK, ""),
    (["silence", "list"], "ok.toml", EXIT_OK, "key=openai-main"),
    (["disable", "openai-main", "--reason", "r"], "ok.toml", EXIT_OK, "disabled in keywatch"),
    (["disable", "claude", "--reason", "r"], "ok.toml", EXIT_ATTENTION, "provider side NOT changed"),
    (["enable", "claude"], "ok.toml", EXIT_ATTENTION, "enable --keywatch-only"),
    (["enable", "claude", "--keywatch-only"], "ok.toml", EXIT_OK, "enabled in keywatch"),
]


def run_phase(rows, tmp_path: Path, env: dict[str, str]) -> list[Outcome]:
    jobs = [([*argv, *(["-c", str(tmp_path / cfg)] if cfg else [])], env, tmp_path) for argv, cfg, _, _ in rows]
    return keywatch_forked(jobs, tmp_path)


def check_phase(rows, outcomes: list[Outcome]) -> None:
    for (argv, cfg, code, says), out in zip(rows, outcomes, strict=True):
        where = f"keywatch {' '.join(argv)} ({cfg}): {out.output}"
        assert out.returncode == code, where
        assert says in out.output, where
        assert not out.traceback, where


@pytest.mark.slow
def test_every_command_returns_the_documented_code(fleet) -> None:
    tmp_path, db, env = fleet
    check_phase(BEFORE_DATABASE, run_phase(BEFORE_DATABASE, tmp_path, env))
    assert not db.exists(), "a command that only reads created the database"
    seeded = run_phase(WITH_DATABASE[:1], tmp_path, env)
    seed_unhealthy(db)
    check_phase(WITH_DATABASE, seeded + run_phase(WITH_DATABASE[1:], tmp_path, env))
    for row in ADMIN:
        check_phase([row], run_phase([row], tmp_path, env))
    used = {tuple(a[:2]) if a and a[0] in ("config", "db", "alert", "silence", "policy") else tuple(a[:1])
            for a, *_ in BEFORE_DATABASE + WITH_DATABASE + ADMIN}
    every = {path for path in _command_paths(build_parser())}
    assert every - used <= {("run",), ("demo",)} | OTHER_COMMANDS, every - used  # run and demo: tests below


OTHER_COMMANDS: set[tuple[str, ...]] = {("doctor",), ("scan",), ("sim",), ("db", "copy")}  # their own tests


def _command_paths(parser, path=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        yield path
    for action in subs:
        for name, sub in action.choices.items():
            yield from _command_paths(sub, (*path, name))


@pytest.mark.slow
def test_the_audit_trail_records_a_failed_enable_as_failed(fleet) -> None:
    tmp_path, _db, env = fleet
    cfg = str(tmp_path / "ok.toml")
    assert keywatch(["disable", "claude", "--reason", "r", "-c", cfg], env, tmp_path).returncode == EXIT_ATTENTION
    out = keywatch(["enable", "claude", "-c", cfg], env, tmp_path)
    assert out.returncode == EXIT_ATTENTION
    assert f"keywatch enable --keywatch-only -c {cfg} claude" in out.output
    events = json.loads(keywatch(["events", "--json", "--key", "claude", "-c", cfg], env, tmp_path).output)
    done = [e for e in events if e["kind"] == "action_done" and e["data"]["action"] == "enable"]
    assert [e["data"]["result"] for e in done] == ["failed"]
    status = json.loads(keywatch(["status", "--json", "-c", cfg], env, tmp_path).output)
    assert {s["key"]: s["admin_state"] for s in status}["claude"] == "disabled"


# -- `run`: start-up errors, Ctrl-C -----------------------------------------------------------------------
def _run(cfg: Path, env: dict[str, str], timeout: float = 30) -> Outcome:
    return keywatch(["run", "-c", str(cfg)], env, cfg.parent, timeout=timeout)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error" in line.lower()]


@pytest.mark.slow
def test_run_with_daemon_listen_in_use_names_the_setting_and_the_address(fleet) -> None:
    tmp_path, db, env = fleet
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "taken.toml"
        cfg.write_text(re.sub(r'listen = "[^"]+"', f'listen = "127.0.0.1:{port}"', (tmp_path / "ok.toml").read_text()))
        out = _run(cfg, env)
    assert out.returncode == EXIT_USAGE, out.output
    assert not out.traceback, out.output
    (line,) = error_lines(out.output)
    assert "daemon.listen" in line and f"127.0.0.1:{port}" in line, line
    assert not db.exists()


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing", "unwritable"])
def test_run_with_daemon_database_in_a_bad_directory_names_the_setting(fleet, problem: str) -> None:
    import os
    import shutil
    import subprocess

    tmp_path, _db, env = fleet
    folder = tmp_path / "no-such-dir" if problem == "missing" else tmp_path / "locked"
    immutable = False
    if problem == "unwritable":
        folder.mkdir(mode=0o500)
        if os.geteuid() == 0:  # root writes in any directory whatever its mode, but not in an immutable one
            chattr = shutil.which("chattr")
            if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
                pytest.skip("root writes in any directory and chattr +i is not available here")
            immutable = True
    cfg = tmp_path / "dbdir.toml"
    cfg.write_text((tmp_path / "ok.toml").read_text().replace(str(tmp_path / "k.db"), str(folder / "k.db")))
    try:
        out = _run(cfg, env)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert out.returncode == EXIT_USAGE, out.output
    (line,) = error_lines(out.output)
    assert "daemon.database" in line and str(folder) in line, line
    assert not (folder / "k.db").exists()


@pytest.mark.slow
def test_db_upgrade_says_why_it_failed(fleet) -> None:
    tmp_path, _db, env = fleet
    cfg = tmp_path / "nodir.toml"
    cfg.write_text((tmp_path / "ok.toml").read_text().replace(str(tmp_path / "k.db"), str(tmp_path / "nope/k.db")))
    out = keywatch(["db", "upgrade", "-c", str(cfg)], env, tmp_path)
    assert out.returncode == EXIT_USAGE and not out.traceback, out.output
    assert "daemon.database" in out.output and "unable to open database file" in out.output, out.output


@pytest.mark.slow
def test_the_default_database_location_is_created_when_missing(sim, tmp_path: Path) -> None:
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="healthy")
    port = free_port()
    keys = [{"name": "a", "provider": "openai", "secret": "env:KW_A", "base_url": f"{sim.url}/openai/v1"}]
    cfg = tmp_path / "kw.toml"
    cfg.write_text(re.sub(r'database = "[^"]+"\n', "", toml_config(keys, db=tmp_path / "x.db",
                                                                   listen=f"127.0.0.1:{port}", interval="1h")))
    state = tmp_path / "state" / "keywatch"  # as systemd's StateDirectory=, not there yet
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], cwd=tmp_path,
                            env=base_env(KW_A=secret, STATE_DIRECTORY=str(state)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (state / "keywatch.db").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert (state / "keywatch.db").exists()
        proc.send_signal(signal.SIGINT)  # Ctrl-C: an orderly stop, then the table's "interrupted"
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_INTERRUPTED, out


# -- a closed pipe -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("argv", [["config", "schema"], ["check", "--json"]])
def test_json_into_a_closed_pipe_ends_quietly(fleet, argv: list[str]) -> None:
    tmp_path, _db, env = fleet
    args = [*argv, *([] if argv[0] == "config" else ["-c", str(tmp_path / "ok.toml")])]
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == EXIT_PIPE, err
    assert err == "", err
