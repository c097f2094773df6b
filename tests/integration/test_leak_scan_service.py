"""Scheduled scans inside a real daemon: a managed key found in a configured path (on disk or only in git
history) is contained at once, as a receiver's report is (deactivated, out of the pools, a critical alert
naming where it was found, a leak report recorded); an unmanaged provider key is recorded and raises a
warning; nothing shows a secret."""

from __future__ import annotations

import asyncio
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


async def test_a_scheduled_scan_contains_the_managed_keys_it_finds(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    h = await start(tmp_path, body(repo))
    for k, s in (("search-a", KEY_A), ("gateway-b", KEY_B), ("ads-c", KEY_C)):
        h.sim.set_key(s, "openai", "healthy", name=k)
    try:
        svc = h.daemon.capabilities["leak_scan"]
        report = await svc.run()
        await h.daemon.capabilities["leaks"].idle()
        assert {(f.key, f.commit is not None) for f in report.findings if f.managed} == {
            ("search-a", False),
            ("gateway-b", True),
        }
        board = h.daemon.runtime.board
        assert board.keys_with(Signal.COMPROMISED) == {"search-a", "gateway-b"}
        critical = {a.key: a for a in h.alerts if a.identity.startswith("compromised:")}
        assert set(critical) == {"search-a", "gateway-b"}
        assert f"{repo}/app.log:2" in critical["search-a"].summary
        assert "old.env:1 (commit " in critical["gateway-b"].summary
        assert all(str(a.severity) == "critical" and a.fields["source"] == "scan" for a in critical.values())
        # OpenAI keys cannot be deactivated at the provider: disabled on keywatch's side, at once, no cycle
        assert "revoke it in its console" in critical["search-a"].title
        states = h.daemon.tracker.snapshot()
        assert {k: str(s.admin_state) for k, s in states.items()} == {
            "search-a": "disabled",
            "gateway-b": "disabled",
            "ads-c": "active",
        }
        warn = [a for a in h.alerts if a.identity.startswith("leak_scan_unmanaged:")]
        assert len(warn) == 1 and str(warn[0].severity) == "warning" and "anthropic-api-key" in warn[0].summary
        # a second scan finds the same: no new alert
        count = len(h.alerts)
        await svc.run()
        assert len(h.alerts) == count
        # later cycles keep it so
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
        found = [e for e in events if e.kind == "leak_reported"]
        assert {e.key for e in found} == {"search-a", "gateway-b"}
        assert all(e.data["source"] == "scan" for e in found)
        assert len([e for e in events if e.kind == "leak_unmanaged"]) == 1
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


async def test_after_a_restart_the_firing_alerts_keep_the_scan_from_reporting_the_same_secrets_again(
    tmp_path: Path, monkeypatch
) -> None:
    from keywatch.engine import immediate
    from keywatch.leaks.scan_service import ScanService
    from keywatch.settings.loader import load_inventory

    repo = make_repo(tmp_path)
    h = await start(tmp_path, body(repo))
    leaks = h.daemon.capabilities["leaks"]
    try:
        await h.daemon.capabilities["leak_scan"].run()
        await leaks.idle()
        firing = [a for a in h.alerts if a.identity.startswith(("leak_scan", "compromised:"))]
        reported = len(await asyncio.to_thread(leaks.store.reports))
        # a restart: a new capability, the pipeline's firing alerts; the unmanaged key was cleaned from the file
        (repo / "app.log").write_text(f"starting\nusing key {KEY_A} for search\n")
        rt = h.daemon.runtime
        h.alerts.clear()
        sink = rt.alerts._sink
        rt.alerts.attach(sink, firing=lambda: firing)  # the durable pipeline's answer after a restart
        again = ScanService(rt)
        await again.run()
        await leaks.idle()
        assert not [a for a in h.alerts if a.firing and a.identity.startswith(("leak_scan:", "compromised:"))]
        assert len(await asyncio.to_thread(leaks.store.reports)) == reported  # nothing reported twice
        resolved = [a for a in h.alerts if a.identity.startswith("leak_scan_unmanaged:") and not a.firing]
        assert len(resolved) == 1  # the unmanaged key is gone from the file
        assert rt.board.keys_with(Signal.COMPROMISED) == {"search-a", "gateway-b"}  # containment's marks
        # Without the leak capability in the process the scan raises the signal for the next cycle, until
        # the key's secret changes (a rotation).
        immediate.attach_exposure(None)
        (repo / "ads.env").write_text(f"ADS={KEY_C}\n")
        await again.run()
        assert "ads-c" in rt.board.keys_with(Signal.COMPROMISED)
        [alert] = [a for a in h.alerts if a.identity == "leak_scan:ads-c"]
        assert str(alert.severity) == "critical" and "ads.env:1" in alert.summary
        monkeypatch.setenv("KW_SCAN_C", "sk-proj-scanC" + "e" * 30 + "NEWC")
        rotated = load_inventory(h.config)
        rt.current_inventory = lambda: rotated  # what a reload after the rotation hands the capabilities
        await again.run()
        assert "ads-c" not in rt.board.keys_with(Signal.COMPROMISED)
    finally:
        immediate.attach_exposure(leaks.found)
        await stop(h)


async def test_a_scheduled_scan_finding_a_managed_key_contains_it_at_once(tmp_path: Path) -> None:
    """The receivers' path, without waiting for a probe cycle: the key is deactivated at the provider by the
    scan itself, out of the pool, a leak report recorded, and a critical alert says where it was found."""
    from tests.integration import leaks_harness as lh

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "old.env").write_text(f"ROUTER_KEY={lh.router_secret(2, 'SCN')}\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "add router key")
    (repo / "old.env").unlink()
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "remove it")
    (repo / "app.log").write_text(f"starting\nusing {lh.router_secret(1, 'SCN')} now\nanthropic: {UNMANAGED}\n")
    scan = f'[scan]\npaths = ["{repo}"]\ninterval = "2h"\ngit_history = true\n'
    h = await lh.start(tmp_path, 4, tag="SCN", extra=scan)
    # The test runs the scans itself: the scheduled one (added by the first cycle's hook, first run at once)
    # would race the first cycle's pool publication.
    h.daemon.scheduler.pause()
    try:
        await h.cycles(1)  # a first cycle: the keys probed and in the pool
        assert h.pooled() == {"k0", "k1", "k2", "k3"}
        probes = h.sim.state.requests.get(("openrouter", "/openrouter/api/v1/key"), 0)
        await h.daemon.capabilities["leak_scan"].run()
        await h.leaks.idle()
        assert h.disabled_at_provider("k1") and h.disabled_at_provider("k2")
        assert not h.disabled_at_provider("k0") and not h.disabled_at_provider("k3")
        assert h.sim.state.requests.get(("openrouter", "/openrouter/api/v1/key"), 0) == probes  # no probe between
        assert h.pooled() == {"k0", "k3"}
        assert h.admin("k1") == "disabled" and h.daemon.tracker.snapshot()["k1"].compromised
        [a1] = h.alerts_for("compromised:k1")
        [a2] = h.alerts_for("compromised:k2")
        assert str(a1.severity) == "critical" and a1.fields["source"] == "scan"
        assert f"{repo}/app.log:2" in a1.fields["location"]
        assert "old.env:1 (commit " in a2.fields["location"]
        assert "deactivated at the provider" in a1.title
        assert not [a for a in h.alerts if a.identity.startswith("leak_scan:")]  # one critical alert per key
        assert h.sample("keywatch_leak_reports_total", {"source": "scan", "matched": "true"}) == 2
        assert h.sample("keywatch_leak_reports_total", {"source": "scan", "matched": "false"}) == 1
        assert h.sample("keywatch_containment_seconds_count") == 2
        reports = await asyncio.to_thread(h.leaks.store.reports)
        scan_reports = {r.key: r for r in reports if r.source == "scan"}
        assert set(scan_reports) == {"k1", "k2", None}
        assert scan_reports["k1"].state == "matched" and scan_reports["k1"].confidence == "exact"
        assert scan_reports[None].state == "unmatched" and scan_reports[None].masked.startswith("sk-ant-")
        [warn] = [a for a in h.alerts if a.identity.startswith("leak_scan_unmanaged:")]
        assert str(warn.severity) == "warning"
        assert not [a for a in h.alerts if a.identity.startswith("leak_unmanaged:")]  # the scan's warning only
        # A second scan finds the same: nothing new is reported or contained again.
        count, patches = len(h.alerts), h.sim.state.requests.get(("openrouter", "/openrouter/api/v1/keys/{hash}"))
        await h.daemon.capabilities["leak_scan"].run()
        await h.leaks.idle()
        assert len(h.alerts) == count
        assert h.sim.state.requests.get(("openrouter", "/openrouter/api/v1/keys/{hash}")) == patches
        assert h.sample("keywatch_leak_reports_total", {"source": "scan", "matched": "true"}) == 2
        text = "\n".join(f"{a.title} {a.summary} {a.fields}" for a in h.alerts)
        text += "\n".join(f"{r.location} {r.detail} {r.masked}" for r in reports)
        events = await asyncio.to_thread(h.daemon.store.events)
        text += "\n".join(f"{e.message} {e.data}" for e in events)
        assert_hidden([lh.router_secret(1, "SCN"), lh.router_secret(2, "SCN"), UNMANAGED], text)
    finally:
        await lh.stop(h)
