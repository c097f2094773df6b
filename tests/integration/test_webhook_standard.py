"""Webhook deliveries follow the Standard Webhooks specification: the `standardwebhooks` library (the
specification's own Python implementation) verifies them over real HTTP, with one secret, with several while
a secret rotates, and with a raw (pre-whsec_) secret; delivery ids are never shared, not across two fresh
databases, not after retention emptied the outbox (where SQLite reuses row numbers), not across retries."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keywatch.notify.config import AlertsConfig
from keywatch.notify.outbox import AlertDB
from keywatch.notify.registry import SinkConfigError, resolve_sinks
from keywatch.notify.webhook import WebhookSink
from keywatch.store.repo import Store
from tests.integration.test_notify_delivery import Receiver, alert, config, http, run_service, wait_until

standardwebhooks = pytest.importorskip("standardwebhooks", reason="the test extra installs standardwebhooks")
Webhook = standardwebhooks.Webhook
WebhookVerificationError = standardwebhooks.webhooks.WebhookVerificationError

__all__ = ["http"]  # the fixture, imported for its side effect


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def fresh_db(path: Path) -> tuple[Store, AlertDB]:
    store = Store(f"sqlite:///{path}")
    store.upgrade()
    return store, AlertDB(store.session)


async def deliver(db: AlertDB, http, secret, n: int = 1, respond=None, first: int = 1) -> Receiver:
    rx = await (Receiver(respond) if respond else Receiver()).start()
    service, _ = await run_service(config("hook"), [WebhookSink("hook", rx.url(), http, secret=secret)], db)
    try:
        for i in range(n):
            await service.emit(alert(first + i))
        await wait_until(lambda: len(rx.accepted()) >= n, "the webhook deliveries")
    finally:
        await service.stop()
        await rx.stop()
    return rx


async def test_a_delivery_verifies_with_the_standardwebhooks_library(tmp_path: Path, http) -> None:
    secret = whsec()
    store, db = fresh_db(tmp_path / "a.db")
    try:
        rx = await deliver(db, http, secret)
    finally:
        store.dispose()
    req = rx.accepted()[0]
    assert req.headers["webhook-signature"].startswith("v1,")
    data = Webhook(secret).verify(req.body, req.headers)  # raises unless valid and fresh
    assert data["alerts"][0]["identity"] == "key_health:k1"
    assert data["id"] == req.headers["webhook-id"] and data["version"] == "2"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body.replace(b"k1", b"k2"), req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec()).verify(req.body, req.headers)
    stale = {**req.headers, "webhook-timestamp": str(int(req.headers["webhook-timestamp"]) - 3600)}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(req.body, stale)


async def test_while_a_secret_rotates_each_secret_verifies_the_same_delivery(tmp_path: Path, http) -> None:
    old, new = whsec(), whsec()
    store, db = fresh_db(tmp_path / "a.db")
    try:
        rx = await deliver(db, http, [old, new])
    finally:
        store.dispose()
    req = rx.accepted()[0]
    assert len(req.headers["webhook-signature"].split()) == 2
    for s in (old, new):  # a receiver still on the old secret, and one already on the new
        Webhook(s).verify(req.body, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(whsec()).verify(req.body, req.headers)


async def test_a_raw_secret_from_before_whsec_still_signs(tmp_path: Path, http) -> None:
    raw = "an-old-raw-secret-of-more-than-24-bytes"
    store, db = fresh_db(tmp_path / "a.db")
    try:
        rx = await deliver(db, http, raw)
    finally:
        store.dispose()
    req = rx.accepted()[0]
    Webhook("whsec_" + base64.b64encode(raw.encode()).decode()).verify(req.body, req.headers)


async def test_two_fresh_databases_never_share_a_delivery_id(tmp_path: Path, http) -> None:
    ids = []
    for name in ("one.db", "two.db"):
        store, db = fresh_db(tmp_path / name)
        try:
            rx = await deliver(db, http, whsec())
        finally:
            store.dispose()
        ids.append(rx.accepted()[0].headers["webhook-id"])
        assert [m.id for m in db.messages()] == [1]  # the row numbers are the same in both...
    assert ids[0] != ids[1]  # ...the delivery ids are not
    assert all(i.startswith("msg_") for i in ids)


async def test_ids_are_not_reused_after_retention_empties_the_outbox(tmp_path: Path, http) -> None:
    store, db = fresh_db(tmp_path / "a.db")
    try:
        first = await deliver(db, http, whsec())
        assert db.purge(datetime.now(UTC) + timedelta(days=1)) == 1  # retention deleted the delivered row
        second = await deliver(db, http, whsec(), first=2)  # another alert: k1 still fires
        rows = db.messages()
    finally:
        store.dispose()
    assert rows[0].id == 1  # SQLite numbered the new row 1 again
    assert first.accepted()[0].headers["webhook-id"] != second.accepted()[0].headers["webhook-id"]


async def test_a_retry_carries_the_same_delivery_id(tmp_path: Path, http) -> None:
    calls = {"n": 0}

    def respond(r):
        calls["n"] += 1
        return (503, {}, "busy") if calls["n"] == 1 else (200, {}, "ok")

    store, db = fresh_db(tmp_path / "a.db")
    try:
        rx = await deliver(db, http, whsec(), respond=respond)
    finally:
        store.dispose()
    assert [r.status for r in rx.requests] == [503, 200]
    assert rx.requests[0].headers["webhook-id"] == rx.requests[1].headers["webhook-id"]
    assert rx.requests[0].headers["webhook-signature"] != ""


def test_the_config_takes_a_list_of_secrets_and_names_a_bad_one(monkeypatch) -> None:
    good, bad = whsec(), "whsec_not*base64"
    monkeypatch.setenv("KW_HOOK_URL", "https://example.invalid/hook")
    monkeypatch.setenv("KW_HOOK_OLD", good)
    monkeypatch.setenv("KW_HOOK_NEW", bad)
    cfg = AlertsConfig.model_validate(
        {"sinks": [{"name": "hook", "type": "webhook", "url": "env:KW_HOOK_URL",
                    "secret": ["env:KW_HOOK_OLD", "env:KW_HOOK_NEW"]}]}
    )
    with pytest.raises(SinkConfigError) as exc:
        resolve_sinks(cfg)
    [problem] = exc.value.problems
    assert problem.startswith("alerts.sinks[0].secret[1]: sink 'hook'") and "base64" in problem
    assert bad not in problem and good not in problem
    monkeypatch.setenv("KW_HOOK_NEW", whsec())
    [spec] = resolve_sinks(cfg)
    assert spec.build(None).describe().endswith("(signed with 2 secrets)")  # type: ignore[arg-type]
