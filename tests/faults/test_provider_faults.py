"""A provider that fails in every way a provider fails (5xx, timeouts, reset connections, 401 to every key)
degrades keywatch: it never disables a key for it, alerts once, and a key of another provider that dies
meanwhile is still acted on."""

from __future__ import annotations

import os
from pathlib import Path

from tests.integration.test_policy_harness import start, stop

FAULTS = ["server_error"] * 4 + ["disconnect"] * 3 + ["hang"] * 2 + ["overloaded"]


async def test_ten_cycles_of_mixed_provider_faults_disable_nothing_and_alert_once(tmp_path: Path, figure) -> None:
    names = [f"k{i:02d}" for i in range(50)]
    h = await start(tmp_path, names)
    try:
        await h.cycles(1)
        for cycle, behaviour in enumerate(FAULTS):
            for i, n in enumerate(names):
                h.set(n, FAULTS[(cycle + i) % len(FAULTS)] if i % 5 else behaviour)
            await h.cycles(1)
        for n in names:
            h.set(n, "healthy")
        await h.cycles(2)
        assert all(h.admin(n) == "active" for n in names)
        assert [a.firing for a in h.alerts_for("provider_outage:openai")] == [True, False]
        key_alerts = [a for a in h.alerts if a.identity.startswith("key_health:")]
        assert key_alerts == []
        figure("provider faults x10 cycles, 50 keys", "5xx/reset/timeout/overloaded: 0 disables, 0 key alerts, "
               "1 outage alert + 1 recovery")
    finally:
        await stop(h)


async def test_every_key_answering_401_at_once_is_held_by_the_blast_radius(tmp_path: Path, figure) -> None:
    names = [f"k{i:02d}" for i in range(50)]
    h = await start(tmp_path, names)
    try:
        await h.cycles(1)
        for n in names:
            h.set(n, "invalid")
        await h.cycles(4)
        disabled = [n for n in names if h.admin(n) == "disabled"]
        assert disabled == []
        assert [a.firing for a in h.alerts_for("blast_radius")] == [True]
        figure("mass 401 on 50 keys", f"{len(disabled)} disabled, 1 blast-radius alert")
    finally:
        await stop(h)


async def test_a_key_dying_while_another_provider_is_down_is_still_disabled(tmp_path: Path, figure) -> None:
    names = [f"oa{i}" for i in range(8)]
    os.environ["KW_FAULT_ANT"] = "sk-ant-api03-" + "f" * 40 + "TEST"
    extra = """
[[keys]]
name = "ant-0"
provider = "anthropic"
secret = "env:KW_FAULT_ANT"
base_url = "{sim}/anthropic"
"""
    h = await start(tmp_path, names, extra=extra)
    try:
        h.sim.set_key(os.environ["KW_FAULT_ANT"], "anthropic", "healthy")
        await h.cycles(1)
        for n in names:
            h.set(n, "server_error")  # openai is down
        h.sim.set_key(os.environ["KW_FAULT_ANT"], "anthropic", "invalid")
        await h.cycles(3)
        assert h.admin("ant-0") == "disabled"
        assert all(h.admin(n) == "active" for n in names)
        assert [a.firing for a in h.alerts_for("provider_outage:openai")] == [True]
        figure("a key dies while another provider is down", "the dead anthropic key disabled after 3 probes; "
               "0 of 8 openai keys touched during the openai outage")
    finally:
        await stop(h)
