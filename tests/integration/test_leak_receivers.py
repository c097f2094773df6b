"""The leak receivers over real HTTP on the daemon's server: what each one refuses (and with which status),
that a refusal acts on nothing and the daemon keeps serving, replays, the partner format's signature and
answer, generic reports by bearer token and by HMAC, unmanaged leaks, and resolved alerts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import aiohttp
import pytest

from keywatch.sim.routes import github as gh
from tests.integration.leaks_harness import GENERIC_HMAC, GENERIC_TOKEN, HOOK_SECRET, start, stop

HOOK = "/hooks/github/secret-scanning"


@pytest.fixture
async def h(tmp_path: Path):
    harness = await start(tmp_path, 4, tag="RCV")
    await harness.cycles(1)
    yield harness
    await stop(harness)


async def healthz(h) -> int:
    async with aiohttp.ClientSession() as s, s.get(h.url + "/healthz") as r:
        return r.status


async def test_webhook_refusals_have_their_status_and_act_on_nothing(h) -> None:
    payload = gh.plant_alert(h.sim.state, "acme/shop", 1, h.secrets["k1"])
    body, headers = gh.webhook(HOOK_SECRET, payload)
    bad_sig = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    cases = [
        ("bad signature", body, bad_sig, 401),
        ("no signature", body, {k: v for k, v in headers.items() if k != "X-Hub-Signature-256"}, 401),
        ("other secret", *gh.webhook("not the secret", payload), 401),
        ("wrong content type", body, {**headers, "Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("oversized", *gh.webhook(HOOK_SECRET, {"pad": "x" * 70000}), 413),
        ("malformed", *gh.webhook(HOOK_SECRET, b"{not json"), 400),
        ("unknown event", *gh.webhook(HOOK_SECRET, payload, event="push"), 400),
        ("no alert", *gh.webhook(HOOK_SECRET, {"action": "created"}), 400),
    ]
    for what, b, hd, want in cases:
        status, answer = await h.post(HOOK, b, hd)
        assert status == want, (what, answer)
    assert await healthz(h) == 200
    await h.leaks.idle()
    assert not h.disabled_at_provider("k1") and h.admin("k1") == "active"
    assert h.alerts_for("compromised:k1") == []
    assert h.sample("keywatch_leak_requests_refused_total", {"receiver": "github", "status": "401"}) == 3
    # The same delivery accepted once, then refused as a replay.
    assert (await h.post(HOOK, body, headers))[0] == 202
    status, answer = await h.post(HOOK, body, headers)
    assert status == 409 and "replay" in answer["message"]
    await h.leaks.idle()
    assert h.disabled_at_provider("k1")
    assert len(h.alerts_for("compromised:k1")) == 1


async def test_replays_are_refused_after_a_restart(tmp_path: Path) -> None:
    h = await start(tmp_path, 2, tag="RPL")
    payload = gh.plant_alert(h.sim.state, "acme/shop", 2, "sk-or-v1-" + "9" * 64)
    body, headers = gh.webhook(HOOK_SECRET, payload)
    assert (await h.post(HOOK, body, headers))[0] == 202
    await stop(h)
    h2 = await start(tmp_path, 2, tag="RPL")
    try:
        assert (await h2.post(HOOK, body, headers))[0] == 409
    finally:
        await stop(h2)


async def test_resolved_is_recorded_and_never_re_enables(h) -> None:
    payload = gh.plant_alert(h.sim.state, "acme/shop", 3, h.secrets["k2"])
    assert (await h.post(HOOK, *gh.webhook(HOOK_SECRET, payload)))[0] == 202
    await h.leaks.idle()
    assert h.disabled_at_provider("k2")
    resolved = {**payload, "action": "resolved", "alert": {**payload["alert"], "resolution": "revoked"}}
    status, answer = await h.post(HOOK, *gh.webhook(HOOK_SECRET, resolved))
    assert status == 202 and "nothing is re-enabled" in answer["message"]
    await h.cycles(3)
    assert h.disabled_at_provider("k2") and h.admin("k2") == "disabled"
    events = await asyncio.to_thread(h.daemon.store.events)
    assert any(e.kind == "leak_resolved" and "acme/shop#3" in e.message for e in events)


async def test_an_unmanaged_secret_is_recorded_masked_and_alerted_as_a_warning(h) -> None:
    stranger = "sk-or-v1-" + "5e" * 32
    payload = gh.plant_alert(h.sim.state, "acme/shop", 4, stranger, secret_type="openrouter_api_key")
    assert (await h.post(HOOK, *gh.webhook(HOOK_SECRET, payload)))[0] == 202
    await h.leaks.idle()
    [alert] = [a for a in h.alerts if a.identity.startswith("leak_unmanaged:")]
    assert str(alert.severity) == "warning" and "sk-or-v1-...5e5e" in alert.title
    assert stranger not in json.dumps([alert.title, alert.summary, alert.fields])
    reports = await asyncio.to_thread(h.leaks.store.reports)
    assert [r.state for r in reports] == ["unmatched"]
    assert h.sample("keywatch_leak_reports_total", {"source": "github", "matched": "false"}) == 1
    assert all(not h.disabled_at_provider(n) for n in h.secrets)


async def test_partner_report_is_verified_answered_and_contains(h) -> None:
    tokens = [
        {
            "token": h.secrets["k3"],
            "type": "openrouter_api_key",
            "url": "https://github.com/a/b/blob/1/x.py",
            "source": "content",
        },
        {
            "token": "sk-or-v1-" + "77" * 32,
            "type": "openrouter_api_key",
            "url": "https://gist.github.com/1",
            "source": "gist_content",
        },
    ]
    body, headers = gh.partner_report(h.sim.state, tokens)
    forged = {
        **headers,
        "Github-Public-Key-Signature": gh.partner_report(h.sim.state, b"[]")[1]["Github-Public-Key-Signature"],
    }
    assert (await h.post("/hooks/github/partner", body, forged))[0] == 401
    unknown = {**headers, "Github-Public-Key-Identifier": "not-a-key"}
    assert (await h.post("/hooks/github/partner", body, unknown))[0] == 401
    status, answer = await h.post("/hooks/github/partner", body, headers)
    assert status == 200
    assert answer == [
        {
            "token_hash": hashlib.sha256(h.secrets["k3"].encode()).hexdigest(),
            "token_type": "openrouter_api_key",
            "label": "true_positive",
        }
    ]
    await h.leaks.idle()
    assert h.disabled_at_provider("k3")
    [alert] = h.alerts_for("compromised:k3")
    assert alert.fields["source"] == "github_partner" and "x.py" in alert.fields["location"]


async def test_generic_reports_by_token_and_by_hmac(h) -> None:
    path = "/api/v1/leaks"
    finding = {"secret": h.secrets["k0"], "location": "ci: build 812, step test, line 40", "scanner": "gitleaks"}
    body = json.dumps(finding).encode()
    json_h = {"Content-Type": "application/json"}
    assert (await h.post(path, body, json_h))[0] == 401
    assert (await h.post(path, body, {**json_h, "Authorization": "Bearer wrong"}))[0] == 401
    assert (await h.post(path, b"[]", {**json_h, "Authorization": f"Bearer {GENERIC_TOKEN}"}))[0] == 400
    both = json.dumps({"secret": "x" * 20, "fingerprint": "sha256:" + "0" * 12, "location": "x"}).encode()
    assert (await h.post(path, both, {**json_h, "Authorization": f"Bearer {GENERIC_TOKEN}"}))[0] == 400
    status, answer = await h.post(path, body, {**json_h, "Authorization": f"Bearer {GENERIC_TOKEN}"})
    assert (status, answer["matched"]) == (202, 1)
    by_fp = json.dumps(
        {"fingerprint": hashlib.sha256(h.secrets["k1"].encode()).hexdigest(), "location": "siem: proxy log 2026-01-05"}
    ).encode()
    sig = "sha256=" + hmac.new(GENERIC_HMAC.encode(), by_fp, hashlib.sha256).hexdigest()
    status, answer = await h.post(path, by_fp, {**json_h, "X-Keywatch-Signature-256": sig})
    assert (status, answer["matched"]) == (202, 1)
    await h.leaks.idle()
    assert h.disabled_at_provider("k0") and h.disabled_at_provider("k1")
    assert h.alerts_for("compromised:k1")[0].fields["location"] == "siem: proxy log 2026-01-05"


async def test_a_receiver_secret_that_cannot_be_read_refuses_the_start_naming_the_field(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from keywatch.daemon import Daemon
    from keywatch.metrics import Metrics
    from keywatch.settings.loader import ConfigError

    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(
        f'[daemon]\ndatabase = "sqlite:///{tmp_path / "kw.db"}"\nlisten = "127.0.0.1:0"\n'
        '[leaks.github]\nwebhook_secret = "env:KW_LEAK_NOT_SET_ANYWHERE"\n'
    )
    daemon = Daemon(cfg, metrics=Metrics(CollectorRegistry()))
    try:
        with pytest.raises(ConfigError) as err:
            await daemon.start()
        assert "leaks.github.webhook_secret" in str(err.value) and "KW_LEAK_NOT_SET_ANYWHERE" in str(err.value)
    finally:
        await daemon.shutdown()
