"""Assisted rotation watching the key's secret source, through the rotation capability against the
simulator: when an Anthropic key is due, a person is told; keywatch then re-reads the key's secret source
(a file here) at every check, and once a person has put the new key there (no `--new-secret`) it verifies
it, publishes and promotes it, and retires the old key through the Admin API (archived, with
allow_destructive). An application reading the destination before every request sees no failed request."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.sim import Simulator

ADMIN = "sk-ant-admin01-" + "W" * 40
OLD = "sk-ant-api03-" + "H" * 40 + "oldW"
NEW = "sk-ant-api03-" + "J" * 40 + "newW"


def config(tmp_path: Path, base: str, src: Path, dest: Path) -> Path:
    path = tmp_path / "keywatch.toml"
    path.write_text(f'''[daemon]
database = "sqlite:///{tmp_path / "k.db"}"

[[accounts]]
name = "ant"
provider = "anthropic"
admin_secret = "env:KW_ANT_ADMIN"
base_url = "{base}"

[[keys]]
name = "claude"
provider = "anthropic"
secret = "file:{src}"
base_url = "{base}"
account = "ant"
rotate_every = "30d"
publish = ["file:{dest}"]
grace = "0s"

[rotation]
verify_interval = "50ms"
allow_destructive = true
''')
    return path


async def test_a_new_value_in_the_secret_source_is_verified_promoted_and_the_old_key_archived(
    fresh_sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keywatch.cli.rotate import _runtime
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.rotation.service import RotationService
    from keywatch.rotation.store import RotationStore
    from keywatch.settings.loader import load_inventory
    from keywatch.store.repo import Store

    base = f"{fresh_sim.url}/anthropic"
    fresh_sim.set_key(ADMIN, "anthropic", "admin")
    fresh_sim.set_key(OLD, "anthropic", key_id="apikey_w_old", name="claude", workspace_id="wrk_w")
    fresh_sim.set_key(NEW, "anthropic", key_id="apikey_w_new", name="claude-2", workspace_id="wrk_w")
    monkeypatch.setenv("KW_ANT_ADMIN", ADMIN)
    src, dest = tmp_path / "source.key", tmp_path / "app.key"
    src.write_text(OLD + "\n")
    dest.write_text(OLD + "\n")
    inventory = load_inventory(config(tmp_path, base, src, dest))
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    http = make_http_client(4, 5.0)
    adapters = AdapterSet(
        http, inventory.accounts, timeout=5.0, completion_model=inventory.config.probe.completion_model
    )
    rt = _runtime(inventory, store, adapters)
    alerts = []

    async def emit(alert) -> None:
        alerts.append(alert)

    rt.emit_alert = emit  # type: ignore[method-assign]
    svc = RotationService(rt, RotationStore(store.engine))
    adapter = adapters.get("anthropic")
    sent, failures = 0, []
    stop = asyncio.Event()

    async def application() -> None:
        nonlocal sent
        while not stop.is_set():
            value = dest.read_text().strip()
            result = await adapter.probe(ManagedKey("app", "anthropic", Secret(value), "x", base_url=base))
            sent += 1
            if result.health is not Health.HEALTHY:
                failures.append(f"{result.health} {result.error_code}")
            await asyncio.sleep(0.005)

    running = asyncio.ensure_future(application())
    try:
        await svc.check()  # due: a person is told, and where to put the new key
        await svc.check()  # the source still holds the key in use: nothing starts
        assert svc.store.history() == []
        (due,) = [a for a in alerts if a.identity == "rotation_due:claude"]
        assert due.firing and f"file:{src}" in due.summary and "--new-secret" in due.summary
        src.write_text(NEW + "\n")  # the person puts the key they made in the Console into the source
        await svc.check()
        (r,) = svc.store.history()
        assert r.actor == "watch" and r.mode == "assisted"
        for _ in range(50):
            if "claude" in svc.tasks:
                await svc.tasks["claude"]
            r = svc.store.get(r.id)
            if r.state != "running":
                break
            await asyncio.sleep(0.05)
            await svc.check()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await running
    assert r.state == "done", r.error
    assert [a.firing for a in alerts if a.identity == "rotation_due:claude"] == [True, False]  # told, then resolved
    assert dest.read_text().strip() == NEW
    assert sent > 10 and failures == [], failures[:5]
    assert r.old_credential == "apikey_w_old"
    req = urllib.request.Request(
        f"{base}/v1/organizations/api_keys?workspace_id=wrk_w",
        headers={"x-api-key": ADMIN, "anthropic-version": "2023-06-01"},
    )
    listed = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(req, timeout=5).read()))
    assert {k["id"]: k["status"] for k in listed["data"]} == {"apikey_w_old": "archived", "apikey_w_new": "active"}
    text = repr([x.as_dict() for x in svc.store.history()]) + repr([(a.title, a.summary, a.fields) for a in alerts])
    text += repr([(e.message, e.data) for e in store.events()])
    for s in (OLD, NEW, ADMIN):
        assert s not in text and s[-10:] not in text
    await adapters.aclose()
    await http.aclose()
    store.dispose()
