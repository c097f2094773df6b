"""Alert titles say what happened and what keywatch did, in the real daemon: a dead key that was disabled,
and keys whose disable the blast-radius limit held back, each say so; 'What keywatch did' is true for both."""

from __future__ import annotations

from pathlib import Path

from keywatch.notify.base import alert_labels
from tests.integration.test_policy_harness import start, stop


def key_alerts(h) -> dict:
    return {a.key: a for a in h.alerts if a.identity.startswith("key_health:") and a.firing}


async def test_a_disabled_key_says_disabled(tmp_path: Path) -> None:
    names = [f"k{i:02d}" for i in range(10)]
    h = await start(tmp_path, names, {"k00": "invalid"})
    try:
        await h.cycles(6)
        assert h.admin("k00") == "disabled"
        a = key_alerts(h)["k00"]
    finally:
        await stop(h)
    assert a.title == "k00 invalid: disabled in keywatch", a.title
    assert a.fields["action"].startswith("disabled in keywatch")
    assert alert_labels(a)["alertname"] == "KeywatchKeyInvalid" and alert_labels(a)["health"] == "invalid"


async def test_a_blocked_disable_says_blocked_and_nothing_claims_it_was_done(tmp_path: Path) -> None:
    names = [f"k{i:02d}" for i in range(20)]
    h = await start(tmp_path, names, {n: "invalid" for n in names})
    try:
        await h.cycles(6)
        assert all(h.admin(n) == "active" for n in names)
        firing = key_alerts(h)
    finally:
        await stop(h)
    assert set(firing) == set(names)
    for name, a in firing.items():
        assert a.title == f"{name} invalid: disable blocked by blast-radius limit", a.title
        assert a.fields["action"].startswith("disable blocked by the blast-radius limit (")
        assert "disabled in keywatch" not in a.fields["action"]
