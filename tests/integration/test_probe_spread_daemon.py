"""The daemon spreads each cycle's probes over `probe.spread` of the interval (on by default): seen at the
simulator, a cycle's probes arrive over the window rather than in one burst; and a stop during a spread
cycle does not wait out the window (in the daemon and in probe worker processes alike): the keys not probed
yet are left for the next start, exit 0, every key's state kept."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tests.faults.support import wait_for
from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_daemon import DaemonProc, http_get

KEYS = 12


def last_cycle(d: DaemonProc) -> float:
    try:
        _, body = http_get(d.url("/metrics"))
    except OSError:
        return 0.0
    for line in body.splitlines():
        if line.startswith("keywatch_last_cycle_timestamp_seconds "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.parametrize("workers", [1, 2])
def test_probes_are_spread_and_a_stop_mid_window_is_prompt(sim, tmp_path: Path, workers: int) -> None:
    secrets = {f"s{i:02d}": unique_secret() for i in range(KEYS)}
    for s in secrets.values():
        sim.set_key(s, provider="openai", behaviour="healthy")
    keys = [{"name": n, "provider": "openai", "secret": f"env:KW_{n.upper()}", "base_url": f"{sim.url}/openai/v1"}
            for n in secrets]
    port = free_port()
    cfg = tmp_path / "keywatch.toml"
    # The default spread (0.5), with an interval long enough to see it: a 6 s window in a 12 s interval.
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{port}", interval="12s")
                   .replace("spread = 0\n", f"workers = {workers}\n"))
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update({f"KW_{n.upper()}": s for n, s in secrets.items()})
    d = DaemonProc(cfg, env, port)
    try:
        first = wait_for(lambda: last_cycle(d), "the first cycle (not spread)", timeout=60)
        wait_for(lambda: last_cycle(d) > first, "the second cycle", timeout=60)
        seen = sorted(sim.state.last_used[s] for s in secrets.values())
        assert seen[-1] - seen[0] > 2.0, f"probes came within {seen[-1] - seen[0]:.2f} s: not spread"

        # Stop the third cycle in its window: some keys are probed, the rest wait for the next start.
        before = {n: sim.state.last_used[s] for n, s in secrets.items()}
        wait_for(lambda: any(sim.state.last_used[s] > before[n] for n, s in secrets.items()),
                 "the third cycle's first probe", timeout=60)
        assert d.stop() == 0, d.logs()
        probed = [n for n, s in secrets.items() if sim.state.last_used[s] > before[n]]
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    assert 0 < len(probed) < KEYS, f"{len(probed)} of {KEYS} keys probed in the stopped cycle"
    with sqlite3.connect(tmp_path / "k.db") as db:
        rows = dict(db.execute("SELECT key, health FROM key_state").fetchall())
    assert {n: rows.get(n) for n in secrets} == dict.fromkeys(secrets, "healthy")
