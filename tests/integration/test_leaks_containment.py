"""Containment end to end: a GitHub secret scanning webhook for a managed key, with the default policies and
a fleet whose dead keys already fill the blast radius, deactivates the key at the provider, takes it out of
every pool and raises a critical alert naming the key, the source and where it was found."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.leaks_harness import start, stop


async def test_github_webhook_contains_a_managed_key_despite_a_full_blast_radius(tmp_path: Path) -> None:
    h = await start(tmp_path, 10, dead=3, tag="ACC")
    try:
        assert [h.admin(f"k{i}") for i in range(3)] == ["disabled"] * 3
        assert h.pooled() == {f"k{i}" for i in range(3, 10)}
        status, body = await h.github_leak("k5", 7, path="deploy/.env", line=3)
        assert status == 202, body
        await h.leaks.idle()
        assert h.disabled_at_provider("k5")
        assert h.admin("k5") == "disabled"
        assert "k5" not in h.pooled()
        [alert] = h.alerts_for("compromised:k5")
        assert alert.firing and str(alert.severity) == "critical"
        assert alert.fields["source"] == "github"
        assert "acme/shop deploy/.env:3" in alert.fields["location"]
        assert "deactivated at the provider" in alert.title
        assert h.sample("keywatch_leak_reports_total", {"source": "github", "matched": "true"}) == 1
        assert h.sample("keywatch_containment_seconds_count") == 1
        assert h.daemon.tracker.snapshot()["k5"].compromised
        # Later cycles neither undo it nor re-enable it, and the key stays marked compromised.
        await h.cycles(5)
        text = b"".join(h.daemon.metrics.exposition_chunks()).decode()
        assert 'keywatch_key_compromised{key="k5",provider="openrouter"} 1.0' in text
        assert h.admin("k5") == "disabled" and h.disabled_at_provider("k5")
        events = await asyncio.to_thread(h.daemon.store.events, "k5")
        assert not [e for e in events if e.kind == "action_done" and e.data.get("action") == "enable"]
    finally:
        await stop(h)


async def test_enable_of_a_compromised_key_needs_compromised_ok_and_records_who_and_why(tmp_path: Path, capsys) -> None:
    from tests.integration.test_policy_harness import cli

    h = await start(tmp_path, 3, tag="ENB")
    try:
        await h.cycles(1)
        assert (await h.github_leak("k1", 9))[0] == 202
        await h.leaks.idle()
        assert h.disabled_at_provider("k1")
        config = str(tmp_path / "keywatch.toml")
        assert await asyncio.to_thread(cli, "enable", "k1", "-c", config) == 2
        assert "k1 is compromised (reported by github at acme/shop" in capsys.readouterr().err
        assert h.disabled_at_provider("k1")
        code = await asyncio.to_thread(
            cli, "enable", "k1", "-c", config, "--compromised-ok", "--by", "alice", "--reason", "rotated upstream"
        )
        assert code == 0
        assert not h.disabled_at_provider("k1")
        [c] = (await asyncio.to_thread(h.leaks.store.compromised, include_cleared=True)).values()
        assert (c.cleared_by, c.cleared_reason) == ("operator:alice", "rotated upstream")
        await h.cycles(2)  # the daemon reads the cleared mark: no policy disables the key again
        assert h.admin("k1") == "active" and not h.disabled_at_provider("k1")
        events = await asyncio.to_thread(h.daemon.store.events, "k1")
        assert any(e.kind == "compromise_cleared" and e.actor == "operator:alice" for e in events)
    finally:
        await stop(h)


async def test_a_report_whose_secret_cannot_be_fetched_yet_survives_a_restart(tmp_path: Path) -> None:
    from keywatch.sim.routes import github as gh

    h = await start(tmp_path, 3, tag="RST")
    gh.data(h.sim.state)["token"] = "a token keywatch does not have"  # GitHub answers 401 for now
    assert (await h.github_leak("k2", 5))[0] == 202
    await h.leaks.idle()
    assert not h.disabled_at_provider("k2")
    [pending] = await asyncio.to_thread(h.leaks.store.reports, None, "pending")
    await stop(h)
    secret = h.secrets["k2"]
    # After the restart GitHub answers (the same alert, in a new simulator); the report is taken up at once.
    h = await start(tmp_path, 3, tag="RST", prepare=lambda sim: gh.plant_alert(sim.state, "acme/shop", 5, secret))
    try:
        await h.cycles(1)
        await h.leaks.idle()
        assert h.disabled_at_provider("k2")
        [alert] = h.alerts_for("compromised:k2")
        assert "alert #5" in alert.fields["location"]
        [report] = [r for r in await asyncio.to_thread(h.leaks.store.reports) if r.id == pending.id]
        assert (report.state, report.key) == ("matched", "k2")
    finally:
        await stop(h)


async def test_pattern_only_reports_are_contained_up_to_their_ceiling_and_every_block_alerts(tmp_path: Path) -> None:
    import hashlib
    import json

    from tests.integration.leaks_harness import GENERIC_TOKEN

    h = await start(tmp_path, 5, tag="PAT", leaks="pattern_limit_per_hour = 2")
    try:
        await h.cycles(1)
        findings = [
            {
                "fingerprint": hashlib.sha256(h.secrets[f"k{i}"].encode()).hexdigest(),
                "location": f"proxy log line {i}",
                "confidence": "pattern",
            }
            for i in range(4)
        ]
        status, answer = await h.post(
            "/api/v1/leaks",
            json.dumps(findings).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {GENERIC_TOKEN}"},
        )
        assert (status, answer["matched"]) == (202, 4)
        await h.leaks.idle()
        contained = sorted(n for n in h.secrets if h.disabled_at_provider(n))
        blocked = sorted(a.key for a in h.alerts if a.identity.startswith("containment_blocked:"))
        assert len(contained) == 2 and len(blocked) == 2 and not set(contained) & set(blocked)
        assert all(str(a.severity) == "critical" for a in h.alerts if a.identity.startswith("containment_blocked:"))
        assert h.sample("keywatch_containment_blocked_total", {"source": "generic"}) == 2
        # An exact match is never held back by that ceiling.
        exact = json.dumps({"secret": h.secrets["k4"], "location": "ci"}).encode()
        assert (
            await h.post(
                "/api/v1/leaks", exact, {"Content-Type": "application/json", "Authorization": f"Bearer {GENERIC_TOKEN}"}
            )
        )[0] == 202
        await h.leaks.idle()
        assert h.disabled_at_provider("k4")
    finally:
        await stop(h)


async def test_a_provider_that_fails_the_deactivation_is_asked_again_at_the_next_cycle(tmp_path: Path) -> None:
    from tests.integration.leaks_harness import MANAGEMENT

    h = await start(tmp_path, 3, tag="RTY")
    try:
        await h.cycles(1)
        h.sim.set_key(MANAGEMENT, "openrouter", "server_error", admin=True)  # the management API is down
        assert (await h.github_leak("k1", 11))[0] == 202
        await h.leaks.idle()
        assert not h.disabled_at_provider("k1")
        [alert] = h.alerts_for("compromised:k1")
        assert "provider deactivation FAILED" in alert.title
        assert "k1" not in h.pooled()  # out of every pool all the same
        h.sim.set_key(MANAGEMENT, "openrouter", "healthy", admin=True)
        await h.cycles(1)
        await h.leaks.idle()
        assert h.disabled_at_provider("k1")
        assert "deactivated at the provider" in h.alerts_for("compromised:k1")[-1].title
        assert h.sample("keywatch_containment_seconds_count") == 1
    finally:
        await stop(h)


async def test_containment_starts_a_rotation_where_the_key_has_destinations(tmp_path: Path) -> None:
    import os

    from tests.integration.leaks_harness import router_secret

    secret = router_secret(99, "ROT")
    os.environ["KW_LEAK_ROT_RK"] = secret
    dest = tmp_path / "rk.key"
    dest.write_text(secret + "\n")
    extra = f"""
[[keys]]
name = "rk"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{{sim}}/openrouter/api/v1"
account = "or"
publish = ["file:{dest}"]
"""

    def prepare(sim) -> None:
        sim.set_key(secret, "openrouter", hash="99" + "cd" * 31, name="rk")

    h = await start(tmp_path, 2, tag="ROT", extra=extra, prepare=prepare)
    try:
        await h.cycles(1)
        h.secrets["rk"] = secret
        assert (await h.github_leak("rk", 21))[0] == 202
        await h.leaks.idle()
        assert h.disabled_at_provider("rk")
        [alert] = h.alerts_for("compromised:rk")
        assert "rotation" in alert.fields["action"] and "started" in alert.fields["action"], alert.fields["action"]
        events = await asyncio.to_thread(h.daemon.store.events, "rk")
        assert any(e.kind.startswith("rotation") for e in events), [e.kind for e in events]
    finally:
        await stop(h)


async def test_containment_time_ends_at_the_providers_answer_not_after_the_writes_behind_it(tmp_path: Path) -> None:
    """keywatch_containment_seconds is arrival to deactivation at the provider: a slow database (here every
    admin-state write takes 1.5 s) slows what follows the deactivation, not the figure the alert reads."""
    import time

    h = await start(tmp_path, 4, tag="SLOW")
    try:
        await h.cycles(1)
        store = h.daemon.store
        plain = store.write_admin

        def slow_write(*args, **kwargs):
            time.sleep(1.5)
            return plain(*args, **kwargs)

        store.write_admin = slow_write
        assert (await h.github_leak("k2", 4))[0] == 202
        await h.leaks.idle()
        assert h.disabled_at_provider("k2") and h.admin("k2") == "disabled"
        assert h.sample("keywatch_containment_seconds_count") == 1
        assert h.sample("keywatch_containment_seconds_sum") < 1.5
    finally:
        await stop(h)
