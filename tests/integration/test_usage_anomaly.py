"""Usage anomalies through a real daemon and the simulator's OpenAI Admin API: two weeks of seasonal
traffic and a planted 20x spike in the current hour are flagged by the first pull (a warning alert and the
usage_anomaly signal), the key stays in its pools and is not disabled unless a policy names the signal, and
the alert resolves once the spike has left the judged hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from keywatch.domain import Signal
from tests.integration.usage_harness import env_secret, start, stop

NOW = datetime(2026, 3, 18, 15, 20, tzinfo=UTC)
ADMIN = "sk-admin-anom" + "a" * 30 + "ADMN"
KEY_A = "sk-proj-anomA" + "b" * 30 + "KEYA"
KEY_B = "sk-proj-anomB" + "c" * 30 + "KEYB"


def body(threshold: str = "", policies: str = "") -> str:
    return f"""
[usage]
{threshold}
{policies}

[[accounts]]
name = "openai-org"
provider = "openai"
admin_secret = "{env_secret("KW_ANOM_ADMIN", ADMIN)}"
base_url = "{{sim}}/openai/v1"

[[keys]]
name = "search-a"
provider = "openai"
secret = "{env_secret("KW_ANOM_A", KEY_A)}"
base_url = "{{sim}}/openai/v1"
account = "openai-org"
provider_key_id = "key_AAA"

[[keys]]
name = "ads-b"
provider = "openai"
secret = "{env_secret("KW_ANOM_B", KEY_B)}"
base_url = "{{sim}}/openai/v1"
account = "openai-org"
provider_key_id = "key_BBB"
"""


async def post_series(url: str, **fields: object) -> int:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/_sim/usage/openai/series", json=fields) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["records"]


async def _start(tmp_path: Path, threshold: str = "", policies: str = ""):
    h = await start(tmp_path, body(threshold, policies))
    h.sim.set_key(ADMIN, "openai", "admin")
    h.sim.set_key(KEY_A, "openai", "healthy", project_id="proj_1", key_id="key_AAA", name="search-a")
    h.sim.set_key(KEY_B, "openai", "healthy", project_id="proj_1", key_id="key_BBB", name="ads-b")
    start_at = (NOW - timedelta(days=14)).isoformat()
    end_at = (NOW + timedelta(hours=1)).isoformat()
    spike = NOW.replace(minute=0).isoformat()
    n = await post_series(
        h.url,
        start=start_at,
        end=end_at,
        api_key_id="key_AAA",
        project_id="proj_1",
        spike_at=spike,
        spike_factor=20,
        seed=11,
    )
    assert n == 14 * 24 + 2  # from 15:00 fourteen days ago to the 16:00 bucket
    await post_series(h.url, start=start_at, end=end_at, api_key_id="key_BBB", project_id="proj_1", seed=12)
    return h


async def test_a_planted_spike_is_flagged_by_the_first_pull(tmp_path: Path) -> None:
    h = await _start(tmp_path)
    try:
        out = await h.pull(NOW)
        assert out.results["openai-org"].errors == []
        firing = [a for a in h.alerts if a.identity.startswith("usage_anomaly:") and a.firing]
        assert [a.identity for a in firing] == ["usage_anomaly:search-a"]
        alert = firing[0]
        assert str(alert.severity) == "warning" and alert.key == "search-a"
        assert "requests" in alert.summary and "tokens" in alert.summary and "x its usual" in alert.summary
        board = h.daemon.runtime.board
        assert board.keys_with(Signal.USAGE_ANOMALY) == {"search-a"}
        # a warning: the default policies do not act on it
        await h.daemon.cycle()
        assert str(h.daemon.tracker.snapshot()["search-a"].admin_state) == "active"
        # three hours later the spike is out of the judged hours: the alert resolves, the signal clears
        await h.pull(NOW + timedelta(hours=3))
        resolved = [a for a in h.alerts if a.identity == "usage_anomaly:search-a" and not a.firing]
        assert len(resolved) == 1
        assert board.keys_with(Signal.USAGE_ANOMALY) == frozenset()
    finally:
        await stop(h)


async def test_threshold_zero_turns_detection_off(tmp_path: Path) -> None:
    h = await _start(tmp_path, "anomaly_threshold = 0")
    try:
        await h.pull(NOW)
        assert not [a for a in h.alerts if a.identity.startswith("usage_anomaly:")]
        assert h.daemon.runtime.board.keys_with(Signal.USAGE_ANOMALY) == frozenset()
    finally:
        await stop(h)


POLICY = """
[[policies]]
name = "contain-usage-anomaly"
when = { signals = ["usage_anomaly"] }
actions = ["disable", { type = "alert", severity = "critical" }]
"""


async def test_a_policy_on_the_signal_makes_it_containment(tmp_path: Path) -> None:
    h = await _start(tmp_path, policies=POLICY)
    try:
        await h.pull(NOW)
        await h.daemon.cycle()
        states = h.daemon.tracker.snapshot()
        assert str(states["search-a"].admin_state) == "disabled"
        assert str(states["ads-b"].admin_state) == "active"
    finally:
        await stop(h)


async def test_an_anomaly_alert_firing_before_a_restart_is_resolved_after_it(tmp_path: Path) -> None:
    from keywatch.domain import Alert, Severity

    h = await start(tmp_path, body())
    try:
        h.sim.set_key(ADMIN, "openai", "admin")
        before = Alert("usage_anomaly:ads-b", Severity.WARNING, True, "t", "s", NOW, key="ads-b")
        rt = h.daemon.runtime
        rt.alerts.attach(rt.alerts._sink, firing=lambda: [before])  # what the durable pipeline remembers
        await h.pull(NOW)  # no usage at all now: nothing anomalous
        assert [(a.identity, a.firing) for a in h.alerts if a.identity.startswith("usage_anomaly:")] == [
            ("usage_anomaly:ads-b", False)
        ]
    finally:
        await stop(h)


async def test_the_series_route_refuses_what_it_cannot_generate(tmp_path: Path) -> None:
    from keywatch.sim.server import Simulator

    sim = Simulator()
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{sim.url}/_sim/usage/openai/series"
            base = {
                "start": "2026-03-01T00:00:00Z",
                "end": "2026-03-02T00:00:00Z",
                "api_key_id": "k",
                "project_id": "p",
            }
            for bad in (
                [1, 2],
                {"start": "2026-03-01T00:00:00Z"},
                {**base, "spike_factor": "twenty"},
                {**base, "end": "2099-01-01T00:00:00Z"},
                {**base, "start": "yesterday"},
                {**base, "colour": "blue"},
            ):
                async with http.post(url, json=bad) as resp:
                    assert resp.status == 400, (bad, await resp.text())
            async with http.post(url, json=base) as resp:
                assert resp.status == 200 and (await resp.json())["records"] == 24
    finally:
        await sim.stop()
