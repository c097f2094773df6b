"""Pools: healthy keys published to the real Redis on this machine and to files never seen half-written."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import uuid
from pathlib import Path

import pytest

from keywatch.domain import AdminState, Health, KeyState, ManagedKey, RateLimit, Secret, Signal
from keywatch.pools import members
from keywatch.pools.config import PoolConfig
from keywatch.pools.publish import write_atomic
from tests.integration.test_policy_harness import cli, start, stop

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis():
    redis = pytest.importorskip(
        "redis", reason="the redis package is not installed (pip install keywatch[redis])"
    )
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, decode_responses=True)
    try:
        client.ping()
    except Exception as exc:
        pytest.skip(
            f"Redis at 127.0.0.1:6379 is not reachable ({type(exc).__name__}); start it with "
            "`redis-server --daemonize yes --bind 127.0.0.1 --port 6379`"
        )
    return client


@pytest.fixture
def redis_prefix():
    client = _redis()
    prefix = f"kwtest:{uuid.uuid4().hex}:"
    yield client, prefix
    for k in client.scan_iter(prefix + "*"):
        client.delete(k)
    client.close()


def pool_toml(
    name: str, redis_key: str | None, path: Path | None, url: str = REDIS_URL, extra: str = ""
) -> str:
    lines = ["[[pools]]", f'name = "{name}"']
    if redis_key:
        lines.append(f'redis = {{ url = "{url}", key = "{redis_key}", ranked = true }}')
    if path:
        lines.append(f'file = {{ path = "{path}", format = "json" }}')
    return "\n".join(lines) + "\n" + extra


async def test_redis_pool_follows_health_within_one_cycle(tmp_path: Path, redis_prefix) -> None:
    client, prefix = redis_prefix
    key = prefix + "openai"
    names = [f"k{i}" for i in range(10)]
    h = await start(tmp_path, names, extra=pool_toml("openai", key, tmp_path / "pool.json"), tag="rp")
    try:
        await h.cycles(1)
        assert client.smembers(key) == {h.secrets[n] for n in names}
        assert client.srandmember(key) in set(h.secrets.values())
        assert client.zcard(key + ":ranked") == 10
        h.set("k1", "invalid")
        h.set("k2", "rate_limited")
        await h.cycles(1)  # one cycle: the broken key is out already, long before any disable
        assert client.smembers(key) == {h.secrets[n] for n in names if n not in ("k1", "k2")}
        assert h.sample("keywatch_pool_size", {"pool": "openai"}) == 8
        assert await asyncio.to_thread(cli, "disable", "k3", "--reason", "test", "-c", h.config_path) == 0
        await h.cycles(1)
        assert h.secrets["k3"] not in client.smembers(key)
        h.daemon.runtime.board.set(Signal.BUDGET_EXHAUSTED, {"k4"})
        await h.cycles(1)
        assert h.secrets["k4"] not in client.smembers(key)
        h.daemon.runtime.board.set(Signal.BUDGET_EXHAUSTED, set())
        h.set("k2", "healthy")
        await h.cycles(1)
        assert {h.secrets["k2"], h.secrets["k4"]} <= client.smembers(key)
        events = await asyncio.to_thread(h.daemon.store.events)
        changes = [e for e in events if e.kind == "pool_changed"]
        assert changes and all(s not in e.message for e in changes for s in h.secrets.values())
    finally:
        await stop(h)


async def test_redis_outage_degrades_and_the_file_target_still_works(tmp_path: Path) -> None:
    path = tmp_path / "pools" / "openai.json"
    names = ["a", "b", "c"]
    toml = pool_toml("openai", "kw:unreachable", path, url="redis://127.0.0.1:1/0")
    h = await start(tmp_path, names, extra=toml, tag="rd")
    try:
        await h.cycles(2)
        assert h.sample("keywatch_pool_publish_errors_total", {"pool": "openai", "target": "redis"}) == 2
        body = json.loads(path.read_text())
        assert {k["name"] for k in body["keys"]} == set(names)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert h.daemon.cycles == 2
    finally:
        await stop(h)


def test_file_pool_is_never_seen_half_written(tmp_path: Path) -> None:
    path = tmp_path / "pool.json"
    write_atomic(path, json.dumps({"keys": []}))
    stop_reading = threading.Event()
    seen = {"reads": 0, "bad": 0, "sizes": set()}

    def reader() -> None:
        while not stop_reading.is_set():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                seen["bad"] += 1
                continue
            seen["reads"] += 1
            seen["sizes"].add(len(data["keys"]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(400):
            keys = [{"name": f"k{j}", "secret": "s" * 2000} for j in range(i % 37)]
            write_atomic(path, json.dumps({"keys": keys}))
    finally:
        stop_reading.set()
        t.join()
    assert seen["bad"] == 0
    assert seen["reads"] > 0 and len(seen["sizes"]) > 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["pool.json"]  # no temp files left behind


def test_env_format_and_order_by_headroom(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from keywatch.pools.publish import render

    pool = PoolConfig.model_validate(
        {
            "name": "p",
            "order": "headroom",
            "labels": {"env": "prod"},
            "file": {"path": str(tmp_path / "p.env"), "format": "env"},
        }
    )
    keys = [
        ManagedKey(n, "openai", Secret(f"sk-proj-{n}" + "z" * 30), "env:X", labels={"env": env})
        for n, env in (("a", "prod"), ("b", "prod"), ("c", "dev"), ("d", "prod"))
    ]

    def state(name: str, remaining: int, health: Health = Health.HEALTHY) -> KeyState:
        return KeyState(
            name,
            "openai",
            "fp",
            "m",
            health=health,
            ratelimit=RateLimit(requests_limit=100, requests_remaining=remaining),
        )

    states = {
        "a": state("a", 10),
        "b": state("b", 90),
        "c": state("c", 99),
        "d": state("d", 50, Health.INVALID),
    }
    ms = members(pool, keys, states, {})
    assert [m.name for m in ms] == ["b", "a"]  # c is not prod, d is not healthy; most room first
    text = render("p", "env", ms, datetime.now(UTC))
    assert f"KEYWATCH_POOL_KEY={keys[1].secret.reveal()}\n" in text
    assert "KEYWATCH_POOL_SIZE=2" in text and "KEYWATCH_POOL_NAMES=b,a" in text
    states["b"] = KeyState("b", "openai", "fp", "m", health=Health.HEALTHY, admin_state=AdminState.DISABLED)
    assert [m.name for m in members(pool, keys, states, {})] == ["a"]
    assert repr(ms[0]).count("z" * 30) == 0
