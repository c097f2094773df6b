"""A reload storm: the config file is rewritten and SIGHUP sent 100 times a second. The last signal must
win: when the storm ends, the daemon runs the config the file held at the last signal, and no reload ever
applies a file older than one applied before it."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.cli_runs import base_env
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

RUNS = 3
SIGNALS = 100  # per run, at 100 a second
PARKED = 1500  # disabled keys in the odd versions: slow to validate, nothing to apply


def _config(db: Path, port: int, version: int) -> str:
    """Version v of the file has v enabled keys, so the key count says which version runs. Odd versions also
    list many disabled keys: such a file takes far longer to read and validate than the one written 10 ms
    after it (a config tool rewriting the file as it goes). The last version is even."""
    lines = ["[daemon]", f'database = "sqlite:///{db}"', f'listen = "127.0.0.1:{port}"',
             "[probe]", 'interval = "1h"', 'timeout = "1s"', ""]
    for i in range(version):
        lines += ["[[keys]]", f'name = "k{i}"', 'provider = "openai"', f'secret = "env:KW_STORM_{i}"',
                  'base_url = "http://127.0.0.1:9/openai/v1"', ""]
    for i in range(PARKED if version % 2 else 0):
        lines += ["[[keys]]", f'name = "parked{i}"', 'provider = "openai"', 'secret = "env:KW_STORM_GONE"',
                  "enabled = false", 'labels = { team = "platform", env = "prod" }', ""]
    return "\n".join(lines)


def _write(cfg: Path, text: str) -> None:
    tmp = cfg.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, cfg)  # a reload never reads half a file


def _metrics(port: int) -> tuple[float, float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return None
    keys = sum(float(v) for v in re.findall(r'^keywatch_keys\{[^}]*\} (\S+)$', body, re.M))
    reloads = sum(float(v) for v in re.findall(r'^keywatch_config_reloads_total\{[^}]*\} (\S+)$', body, re.M))
    return keys, reloads


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _settled(port: int, quiet: float = 0.8, timeout: float = 15.0) -> tuple[float, float]:
    """The key count once the reload counter has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = _metrics(port)
        if now != last:
            last, since = now, time.monotonic()
        elif now is not None and time.monotonic() - since >= quiet:
            return now
        time.sleep(0.1)
    raise AssertionError(f"reloads did not settle within {timeout}s (last seen {last})")


def _signal(proc: subprocess.Popen, cfg: Path, db: Path, port: int, versions: range) -> None:
    for v in versions:
        _write(cfg, _config(db, port, v))
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.01)  # 100 a second


def _applied(log: Path) -> list[int]:
    """The versions the daemon applied, in order (a version's key count is its number)."""
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and '"reloaded"' in line:
            out.append(json.loads(line)["keys"])
    return out


def _storm(tmp: Path, env: dict[str, str]) -> tuple[int, int, int, int]:
    """(keys in force at the end, keys of the last version, reloads applied, reloads that went back to an
    older version than one applied before)."""
    port = free_port()
    cfg, db = tmp / "keywatch.toml", tmp / "k.db"
    _write(cfg, _config(db, port, 0))
    log_path = tmp / "daemon.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not _ready(port):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        _signal(proc, cfg, db, port, range(1, SIGNALS + 1))
        _settled(port)  # the storm, worked through
        _signal(proc, cfg, db, port, range(SIGNALS + 1, SIGNALS + 3))  # its tail: a slow file, then the last
        keys, reloads = _settled(port)
        assert proc.poll() is None, "the daemon died in the storm"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    applied = _applied(log_path)
    backwards = sum(1 for a, b in itertools.pairwise(applied) if b < a)
    return int(keys), SIGNALS + 2, int(reloads), backwards


def test_reload_storm_last_signal_wins(tmp_path: Path, figure) -> None:
    env = base_env(**{f"KW_STORM_{i}": f"sk-proj-{'storm' * 8}{i:06d}" for i in range(SIGNALS + 3)})
    outcomes = []
    for run in range(RUNS):
        d = tmp_path / f"run{run}"
        d.mkdir()
        outcomes.append(_storm(d, env))
    won = sum(1 for keys, want, *_ in outcomes if keys == want)
    backwards = sum(b for *_, b in outcomes)
    reloads = [r for *_, r, _b in outcomes]
    figure("reload storm", f"{SIGNALS + 2} SIGHUPs at 100/s, {RUNS} runs: the last config in force in {won}/{RUNS}, "
           f"{backwards} reloads applied an older file after a newer one (reloads per run: "
           f"{', '.join(map(str, reloads))}; signals during a reload coalesce into one)")
    assert won == RUNS and backwards == 0, (
        f"(in force, wanted, reloads, went back) per run = {outcomes}")
