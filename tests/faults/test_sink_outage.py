"""A sink down for many retry intervals while keys keep dying: once it is back it gets every alert exactly
once and in order, and the other sink was never held up by it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.faults.support import wait_for
from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_notify_delivery import Received, ThreadedReceiver

pytestmark = pytest.mark.slow




def test_a_sink_down_for_many_retry_intervals_gets_everything_once_in_order(sim, tmp_path: Path, figure) -> None:
    secrets = {f"k{i:02d}": unique_secret() for i in range(10)}
    for s in secrets.values():
        sim.set_key(s, provider="openai", behaviour="healthy")
    down = {"on": True}

    def flaky(r: Received) -> tuple[int, dict[str, str], str]:
        return (503, {}, "down for maintenance") if down["on"] else (200, {}, "ok")

    with ThreadedReceiver(flaky) as hook, ThreadedReceiver() as other:
        keys = [{"name": n, "provider": "openai", "secret": f"env:KW_{n.upper()}", "base_url": f"{sim.url}/openai/v1"}
                for n in secrets]
        extra = ('\n[[policies]]\nname = "page-on-invalid"\nwhen = { health = "invalid" }\n'
                 'actions = [{ type = "alert", severity = "critical" }]\n'
                 '\n[alerts]\ngroup_wait = "0s"\nretry_base = "200ms"\nretry_max = "400ms"\n'
                 '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
                 '\n[[alerts.sinks]]\nname = "other"\ntype = "webhook"\nurl = "env:KW_OTHER"\nsecret = "env:KW_HMAC"\n')
        cfg = tmp_path / "keywatch.toml"
        cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{free_port()}", interval="1s",
                                   extra=extra))
        env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        env.update({f"KW_{n.upper()}": s for n, s in secrets.items()})
        env.update(KW_HOOK=hook.url("/hook"), KW_OTHER=other.url("/other"), KW_HMAC="hmac-secret-0123456789")
        log = tmp_path / "daemon.log"
        proc = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        order = sorted(secrets)
        try:
            dead_at: dict[str, float] = {}
            for n in order:  # a key dies every ~0.6 s while the sink is down
                sim.set_key(secrets[n], provider="openai", behaviour="invalid")
                dead_at[n] = time.monotonic()
                time.sleep(0.6)
            wait_for(lambda: len(other.accepted()) >= len(order), "the other sink to hear every alert")
            other_lag = max(r.at for r in other.accepted()) - dead_at[order[-1]]
            refused = len(hook.requests)
            down["on"] = False
            wait_for(lambda: len(hook.accepted()) >= len(order), "the sink to catch up")
            time.sleep(1.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()[-2000:]
    heard = [a["identity"] for r in hook.accepted() for a in r.json()["alerts"]]
    assert heard == [f"key_health:{n}" for n in order]  # each once, in the order they happened
    assert refused >= 3  # it really was retried while down
    # The other sink heard every alert while this one was still down (waited for above): not held up.
    figure("sink down for ~6 s (200-400 ms retries)", f"{refused} refused attempts, then {len(heard)} alerts "
           f"delivered once in order; the other sink heard each within {other_lag:.1f}s")
