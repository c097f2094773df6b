"""Consumers told at promote, through the rotation capability against the simulator: the Redis pool and
the pool file holding the key switch to the new key at once (a client taking its key from the Redis pool
before every request sees no failed request), the promote_command runs with the rotation's facts and no
secret, and the promote_webhook is signed the Standard Webhooks way."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keywatch.domain import Health, ManagedKey, Secret, fingerprint
from keywatch.notify.webhook import verify
from keywatch.sim import Simulator

from .test_pools import redis_prefix  # noqa: F401 (fixture)
from .test_rotation_e2e import OR_MANAGEMENT, OR_OLD

HOOK_SECRET = "whsec_" + "a2V5d2F0Y2gtcm90YXRpb24td2ViaG9vay1zZWNyZXQ="


class Receiver:
    """A webhook receiver on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.got.append((await request.read(), dict(request.headers)))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def config(tmp_path: Path, sim_url: str, redis_key: str, hook_url: str) -> Path:
    base = f"{sim_url}/openrouter/api/v1"
    dest, pool_file, env_out = tmp_path / "router.key", tmp_path / "pool.json", tmp_path / "hook.json"
    dest.write_text(OR_OLD + "\n")
    script = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"
    command = json.dumps([sys.executable, "-c", script, str(env_out)])
    path = tmp_path / "keywatch.toml"
    path.write_text(f'''[daemon]
database = "sqlite:///{tmp_path / "k.db"}"

[[accounts]]
name = "or"
provider = "openrouter"
admin_secret = "env:KW_OR_ADMIN"
base_url = "{base}"

[[keys]]
name = "router"
provider = "openrouter"
secret = "file:{dest}"
base_url = "{base}"
account = "or"
publish = ["file:{dest}"]
grace = "1s"
promote_command = {command}
promote_webhook = "env:KW_PROMOTE_HOOK"

[[pools]]
name = "routers"
keys = ["router"]
redis = {{ url = "redis://127.0.0.1:6379/0", key = "{redis_key}" }}
file = {{ path = "{pool_file}", format = "json" }}

[rotation]
verify_interval = "50ms"
verify_timeout = "10s"
allow_destructive = true
webhook_secret = "env:KW_HOOK_SECRET"
''')
    return path


async def test_redis_and_file_pools_hook_and_webhook_are_told_at_promote(
    fresh_sim: Simulator,
    tmp_path: Path,
    redis_prefix,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from keywatch.cli.rotate import _runtime
    from keywatch.pools import PoolManager
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.rotation.service import RotationService
    from keywatch.rotation.store import RotationStore
    from keywatch.settings.loader import load_inventory
    from keywatch.store.repo import Store

    redis, prefix = redis_prefix
    fresh_sim.set_key(OR_MANAGEMENT, "openrouter", "admin")
    fresh_sim.set_key(OR_OLD, "openrouter", hash="h_old", name="router", limit=25)
    fresh_sim.state.propagation_delay_s = 0.4
    receiver = Receiver()
    await receiver.start()
    monkeypatch.setenv("KW_OR_ADMIN", OR_MANAGEMENT)
    monkeypatch.setenv("KW_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("KW_PROMOTE_HOOK", receiver.url)
    redis_key = f"{prefix}routers"
    cfg = config(tmp_path, fresh_sim.url, redis_key, receiver.url)
    inventory = load_inventory(cfg)
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    http = make_http_client(4, 5.0)
    adapters = AdapterSet(
        http, inventory.accounts, timeout=5.0, completion_model=inventory.config.probe.completion_model
    )
    rt = _runtime(inventory, store, adapters)
    svc = RotationService(rt, RotationStore(store.engine))
    pools = PoolManager()
    key = inventory.key("router")
    adapter = adapters.get("openrouter")

    rt.tracker.sync_inventory(inventory.keys)

    async def cycle() -> None:  # what the daemon's cycle does: probe, then publish the pools
        rt.tracker.apply(await adapter.probe(key))
        await pools.publish_all(inventory.config.pools, inventory.keys, rt.tracker.snapshot(), {}, None)

    await cycle()
    assert redis.smembers(redis_key) == {OR_OLD}
    sent, failures = 0, []
    stop = asyncio.Event()

    async def client() -> None:  # takes its key from the Redis pool before every request
        nonlocal sent
        while not stop.is_set():
            value = await asyncio.to_thread(redis.srandmember, redis_key)
            result = await adapter.probe(ManagedKey("app", "openrouter", Secret(value), "x", base_url=key.base_url))
            sent += 1
            if result.health is not Health.HEALTHY:
                failures.append(f"{result.health} {result.error_code}")
            await asyncio.sleep(0.005)

    running = asyncio.ensure_future(client())
    try:
        await asyncio.sleep(0.2)
        started = await svc.request("router", actor="test", reason="by hand")
        assert started.ok, started.message
        await svc.tasks["router"]  # to promote; then waiting out the grace period
        r = svc.store.get(started.rotation.id)
        assert r.step == "grace" and r.error is None, r.error
        published = (tmp_path / "router.key").read_text().strip()
        assert published != OR_OLD
        assert redis.smembers(redis_key) == {published}  # republished at promote, not at the next cycle
        pool_file = json.loads((tmp_path / "pool.json").read_text())
        assert [k["secret"] for k in pool_file["keys"]] == [published]
        await cycle()  # a cycle before the daemon re-read its secrets: the pool keeps the new key
        assert redis.smembers(redis_key) == {published}
        while r.state == "running":
            await asyncio.sleep(0.2)
            await svc.check()
            if "router" in svc.tasks:
                await svc.tasks["router"]
            r = svc.store.get(r.id)
        await asyncio.sleep(0.3)  # the client goes on after the old key is deleted
    finally:
        stop.set()
        await running
        await receiver.stop()
    assert r.state == "done", r.error
    assert sent > 30 and failures == [], failures[:5]
    listed = await adapter.list_credentials(adapter.with_credential(key, _new(published, r.new_credential)))
    assert [c.id for c in listed] == [r.new_credential]

    told = json.loads((tmp_path / "hook.json").read_text())
    assert "KW_OR_ADMIN" not in told and "KW_HOOK_SECRET" not in told  # not the daemon's environment
    assert told["KEYWATCH_KEY"] == "router" and told["KEYWATCH_ROTATION"] == r.id
    assert told["KEYWATCH_FINGERPRINT"] == fingerprint(published)
    assert told["KEYWATCH_PREVIOUS_FINGERPRINT"] == fingerprint(OR_OLD)
    assert told["KEYWATCH_DESTINATIONS"] == f"file:{tmp_path / 'router.key'}"
    ((body, raw_headers),) = receiver.got
    headers = {k.lower(): v for k, v in raw_headers.items()}
    assert verify(HOOK_SECRET, body, headers)
    event = json.loads(body)
    assert event["type"] == "key.rotated" and event["id"] == headers["webhook-id"]
    assert event["data"]["key"] == "router" and event["data"]["fingerprint"] == fingerprint(published)
    for text in (json.dumps(told), body.decode(), repr([x.as_dict() for x in svc.store.history()])):
        for s in (OR_OLD, published):
            assert s not in text and s[-8:] not in text
    await pools.aclose()
    await adapters.aclose()
    await http.aclose()
    store.dispose()


async def test_a_consumer_that_fails_is_recorded_and_the_rotation_goes_on(fresh_sim: Simulator, tmp_path: Path) -> None:
    from keywatch.rotation.consumers import Promotion, post_webhook, run_command

    p = Promotion("r1", "router", "openrouter", "fp-new", "fp-old", ("file:/x",), 0.0)
    assert await run_command([sys.executable, "-c", "raise SystemExit(3)"], p, 5) == (
        f"promote_command {sys.executable!r} exited with status 3"
    )
    assert "could not start" in (await run_command(["/nonexistent/kw-hook"], p, 5) or "")
    assert "was killed" in (await run_command([sys.executable, "-c", "import time; time.sleep(30)"], p, 0.3) or "")
    problem = await post_webhook("http://127.0.0.1:9/hooks/T0Sekrit1Token2Value3?token=sekrit", p, [HOOK_SECRET], 2)
    assert problem is not None and problem.startswith("promote_webhook http://127.0.0.1:9/hooks/****: ")
    assert "ekrit" not in problem  # the URL shown masked, as the alert sinks show theirs


def _new(value: str, cid: Any) -> Any:
    from keywatch.providers.base import NewCredential

    return NewCredential(cid or "", Secret(value), {})
