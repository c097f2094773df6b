"""Scheduled scans inside a real daemon: a managed key found in a configured path (on disk or only in git
history) is raised as compromised and contained by the built-in policy at the next cycle, with a critical
alert naming where it was found; an unmanaged provider key raises a warning; nothing shows a secret."""

from __future__ import annotations

import subprocess
from pathlib import Path

from keywatch.domain import Signal
from tests.integration.usage_harness import env_secret, start, stop
from tests.leaks_corpus import assert_hidden

KEY_A = "sk-proj-scanA" + "b" * 30 + "KEYA"
KEY_B = "gw_live_scanB" + "c" * 30 + "KEYB"
KEY_C = "sk-proj-scanC" + "d" * 30 + "KEYC"
UNMANAGED = "sk-ant-api03-" + "Zx9" * 31 + "AA"


def body(repo: Path) -> str:
    return f"""
[safety]
max_disabled_percent = 100

[scan]
paths = ["{repo}"]
interval = "2h"
git_history = true

[[keys]]
name = "search-a"
provider = "openai"
secret = "{env_secret("KW_SCAN_A", KEY_A)}"
base_url = "{{sim}}/openai/v1"

[[keys]]
name = "gateway-b"
provider = "openai_compatible"
secret = "{env_secret("KW_SCAN_B", KEY_B)}"
base_url = "{{sim}}/openai/v1"

[[keys]]
name = "ads-c"
provider = "openai"
secret = "{env_secret("KW_SCAN_C", KEY_C)}"
base_url = "{{sim}}/openai/v1"
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=dev", "-c", "user.email=dev@example.com", *args],
        check=True,
        capture_output=True,
    )


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "old.env").write_text(f"GATEWAY_TOKEN={KEY_B}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "add gateway token")
    (repo / "old.env").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "remove it")
    (repo / "app.log").write_text(f"starting\nusing key {KEY_A} for search\nanthropic: {UNMANAGED}\n")
    return repo


async def test_a_scheduled_scan_raises_compromised_and_the_default_policy_contains_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    h = await start(tmp_path, body(repo))
    for k, s in (("search-a", KEY_A), ("gateway-b", KEY_B), ("ads-c", KEY_C)):
        h.sim.set_key(s, "openai", "healthy", name=k)
    try:
        svc = h.daemon.capabilities["leak_scan"]
        report = await svc.run()
        assert {(f.key, f.commit is not None) for f in report.findings if f.managed} == {
            ("search-a", False),
            ("gateway-b", True),
        }
        board = h.daemon.runtime.board
        assert board.keys_with(Signal.COMPROMISED) == {"search-a", "gateway-b"}
        critical = {a.key: a for a in h.alerts if a.identity.startswith("leak_scan:")}
        assert set(critical) == {"search-a", "gateway-b"}
        assert f"{repo}/app.log:2" in critical["search-a"].summary
        assert "old.env:1 (commit " in critical["gateway-b"].summary
        assert all(str(a.severity) == "critical" for a in critical.values())
        warn = [a for a in h.alerts if a.identity.startswith("leak_scan_unmanaged:")]
        assert len(warn) == 1 and str(warn[0].severity) == "warning" and "anthropic-api-key" in warn[0].summary
        # a second scan finds the same: no new alert
        count = len(h.alerts)
        await svc.run()
        assert len(h.alerts) == count
        # the next cycle: the built-in policy disables both, the third key stays
        await h.daemon.cycle()
        states = h.daemon.tracker.snapshot()
        assert {k: str(s.admin_state) for k, s in states.items()} == {
            "search-a": "disabled",
            "gateway-b": "disabled",
            "ads-c": "active",
        }
        # the job runs on the configured interval
        job = h.daemon.scheduler.get_job("leak_scan")
        assert job is not None and job.trigger.interval.total_seconds() == 7200
        text = "\n".join(f"{a.title} {a.summary} {a.fields}" for a in h.alerts)
        events = h.daemon.runtime.store.events()
        found = [e for e in events if e.kind == "leak_found"]
        assert {e.key for e in found} == {"search-a", "gateway-b"}
        assert all(e.data["source"] == "scan" and e.data["where"] for e in found)
        text += "\n".join(f"{e.message} {e.data}" for e in events)
        assert_hidden([KEY_A, KEY_B, UNMANAGED], text)
    finally:
        await stop(h)


async def test_a_missing_path_is_logged_and_the_scan_goes_on(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    h = await start(tmp_path, body(repo).replace(f'paths = ["{repo}"]', f'paths = ["{tmp_path}/gone", "{repo}"]'))
    try:
        report = await h.daemon.capabilities["leak_scan"].run()
        assert any("gone: no such file or directory" in n for n in report.notes)
        assert {f.key for f in report.findings if f.managed} == {"search-a", "gateway-b"}
    finally:
        await stop(h)


async def test_after_a_restart_the_firing_alerts_keep_the_key_compromised_until_its_secret_changes(
    tmp_path: Path, monkeypatch
) -> None:
    from keywatch.leaks.scan_service import ScanService
    from keywatch.settings.loader import load_inventory

    repo = make_repo(tmp_path)
    h = await start(tmp_path, body(repo))
    try:
        await h.daemon.capabilities["leak_scan"].run()
        firing = [a for a in h.alerts if a.identity.startswith("leak_scan")]
        # a restart: a new capability, an empty board, the pipeline's firing alerts; the file was cleaned
        (repo / "app.log").write_text("starting\n")
        rt = h.daemon.runtime
        rt.board.set(Signal.COMPROMISED, ())
        h.alerts.clear()
        sink = rt.alerts._sink
        rt.alerts.attach(sink, firing=lambda: firing)  # the durable pipeline's answer after a restart
        again = ScanService(rt)
        await again.run()
        assert rt.board.keys_with(Signal.COMPROMISED) == {"search-a", "gateway-b"}
        assert not [a for a in h.alerts if a.firing and a.identity.startswith("leak_scan:")]  # not announced twice
        resolved = [a for a in h.alerts if a.identity.startswith("leak_scan_unmanaged:") and not a.firing]
        assert len(resolved) == 1  # the unmanaged key is gone from the file
        # search-a gets a new secret (a rotation): it no longer carries the signal; gateway-b still does
        monkeypatch.setenv("KW_SCAN_A", "sk-proj-scanA" + "e" * 30 + "NEWA")
        rotated = load_inventory(h.config)
        rt.current_inventory = lambda: rotated  # what a reload after the rotation hands the capabilities
        await again.run()
        assert rt.board.keys_with(Signal.COMPROMISED) == {"gateway-b"}
    finally:
        await stop(h)
