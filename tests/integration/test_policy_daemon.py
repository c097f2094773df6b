"""Policies in the real daemon: outages, blast radius, manual vs automatic disable, flapping, audit trail."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keywatch.domain import AdminState
from tests.integration.test_policy_harness import cli, start, stop


async def test_provider_5xx_for_ten_cycles_disables_nothing_and_alerts_once(tmp_path: Path) -> None:
    names = [f"k{i}" for i in range(6)]
    h = await start(tmp_path, names)
    try:
        await h.cycles(1)
        for n in names:
            h.set(n, "server_error")
        await h.cycles(10)
        assert h.sample("keywatch_provider_outage", {"provider": "openai"}) == 1
        for n in names:
            h.set(n, "healthy")
        await h.cycles(2)
        assert all(h.admin(n) == "active" for n in names)
        outage = h.alerts_for("provider_outage:openai")
        assert [a.firing for a in outage] == [True, False]
        assert [a for a in h.alerts if a.identity.startswith("key_health:")] == []
        assert h.sample("keywatch_provider_outage", {"provider": "openai"}) == 0
    finally:
        await stop(h)


async def test_invalid_answers_during_an_outage_do_not_count_toward_disabling(tmp_path: Path) -> None:
    names = [f"k{i}" for i in range(6)]
    h = await start(tmp_path, names)
    try:
        await h.cycles(1)
        for n in names[1:]:
            h.set(n, "server_error")
        h.set("k0", "invalid")  # a provider in trouble may answer 401 to some keys
        await h.cycles(5)
        assert h.admin("k0") == "active"
        for n in names[1:]:
            h.set(n, "healthy")
        await h.cycles(2)
        assert h.admin("k0") == "active"  # only 2 probes counted since the outage ended
        await h.cycles(1)
        assert h.admin("k0") == "disabled"
    finally:
        await stop(h)


async def test_adapter_calling_every_key_invalid_trips_blast_radius_before_20_percent(tmp_path: Path) -> None:
    names = [f"k{i:02d}" for i in range(20)]
    h = await start(tmp_path, names, {n: "invalid" for n in names})
    try:
        await h.cycles(6)
        disabled = [n for n in names if h.admin(n) == "disabled"]
        assert len(disabled) < 4, disabled
        blast = h.alerts_for("blast_radius")
        assert len(blast) == 1 and blast[0].firing and str(blast[0].severity) == "critical"
        assert (
            h.sample(
                "keywatch_actions_total",
                {"policy": "default-disable-invalid", "action": "disable", "result": "blocked"},
            )
            >= 20
        )
        events = await asyncio.to_thread(h.daemon.store.events)
        assert any(e.kind == "action_blocked" and "blast radius" in e.message for e in events)
    finally:
        await stop(h)


async def test_manual_disable_survives_recovery_automatic_disable_is_lifted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"k{i}" for i in range(10)]
    h = await start(tmp_path, names)
    try:
        await h.cycles(1)
        h.set("k1", "invalid")
        await h.cycles(3)
        assert h.admin("k1") == "disabled"
        rc = await asyncio.to_thread(
            cli,
            "disable",
            "k2",
            "--reason",
            "INC-42 key shared in a ticket",
            "--by",
            "alice",
            "-c",
            h.config_path,
        )
        assert rc == 0
        await h.cycles(1)  # the running daemon picks the operator's decision up from the database
        assert h.admin("k2") == "disabled"
        h.set("k1", "healthy")
        await h.cycles(4)
        assert h.admin("k1") == "active"
        assert h.admin("k2") == "disabled"
        await h.cycles(3)
        assert h.admin("k2") == "disabled"
        capsys.readouterr()
        assert await asyncio.to_thread(cli, "events", "-c", h.config_path) == 0
        out = capsys.readouterr().out
        k1 = [ln for ln in out.splitlines() if " k1 " in ln and "disable k1" in ln]
        assert any(
            "health invalid" in ln and "3 probes" in ln and "default-disable-invalid" in ln for ln in k1
        ), out
        assert any(
            "operator:alice" in ln and "INC-42 key shared in a ticket" in ln for ln in out.splitlines()
        )
        assert h.secrets["k1"] not in out
        assert await asyncio.to_thread(cli, "events", "-c", h.config_path, "--key", "k1", "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert {r["key"] for r in rows} == {"k1"}
        assert [r["data"]["action"] for r in rows if r["kind"] == "action_done"] == ["disable", "enable"]
        # and the operator can lift their own decision
        assert await asyncio.to_thread(cli, "enable", "k2", "--by", "alice", "-c", h.config_path) == 0
        await h.cycles(1)
        assert h.admin("k2") == "active"
    finally:
        await stop(h)


async def test_flapping_key_keeps_one_alert_not_one_per_flap(tmp_path: Path) -> None:
    extra = """
[[policies]]
name = "page-on-invalid"
when = { health = "invalid" }
actions = [{ type = "alert", severity = "critical" }]
"""
    names = [f"k{i}" for i in range(4)]
    h = await start(tmp_path, names, extra=extra)
    try:
        for i in range(12):
            h.set("k0", "invalid" if i % 2 == 0 else "healthy")
            await h.cycles(1)
        ours = [a for a in h.alerts_for("key_health:k0") if a.fields.get("policy") == "page-on-invalid"]
        assert [a.firing for a in ours] == [True]
        h.set("k0", "healthy")
        await h.cycles(3)
        ours = [a for a in h.alerts_for("key_health:k0") if a.fields.get("policy") == "page-on-invalid"]
        assert [a.firing for a in ours] == [True, False]
    finally:
        await stop(h)


async def test_dry_run_decides_and_records_but_does_nothing(tmp_path: Path) -> None:
    names = [f"k{i}" for i in range(10)]
    h = await start(tmp_path, names, {"k0": "invalid"}, extra="[safety]\ndry_run = true\n")
    try:
        await h.cycles(5)
        assert h.admin("k0") == "active"
        assert [a for a in h.alerts_for("key_health:k0") if "policy" in a.fields] == []
        events = await asyncio.to_thread(h.daemon.store.events, "k0")
        dry = [e for e in events if e.data.get("result") == "dry_run"]
        assert {e.data["action"] for e in dry} == {"disable", "alert"}
        assert len([e for e in dry if e.data["action"] == "disable"]) == 1  # once, not every cycle
    finally:
        await stop(h)


async def test_policy_test_shows_what_would_happen_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"k{i}" for i in range(10)]
    h = await start(tmp_path, names, {"k3": "invalid"}, extra="[safety]\ndisable_after_probes = 4\n")
    try:
        await h.cycles(2)
        capsys.readouterr()
        assert await asyncio.to_thread(cli, "policy", "test", "-c", h.config_path) == 0
        assert "no policy matches" in capsys.readouterr().out
        await h.cycles(2)
        # the daemon would have acted; make the database say k3 is still active, as if it had not
        store = h.daemon.store
        await asyncio.to_thread(
            store.set_admin_state, "k3", AdminState.ACTIVE, "keywatch", "reset", datetime.now(UTC)
        )
        assert await asyncio.to_thread(cli, "policy", "test", "-c", h.config_path, "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        disable = [r for r in rows if r["key"] == "k3" and r["action"] == "disable"]
        assert disable and disable[0]["would"] == "do" and "4 probes" in disable[0]["reason"]
        assert (await asyncio.to_thread(store.admin_info, "k3"))["state"] == "active"
    finally:
        await stop(h)
