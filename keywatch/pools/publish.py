"""Publishing pools to Redis and to files. A target that is down is logged and counted, never fatal:
the next cycle publishes the full membership again."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from keywatch.domain import ManagedKey, Secret
from keywatch.pools.config import FileTarget, PoolConfig, RedisTarget
from keywatch.pools.membership import PoolHolds, PoolMember, members

log = structlog.get_logger("keywatch.pools")


class PublishError(Exception):
    """A target could not be written; the message never holds a secret."""


# -- file ----------------------------------------------------------------------------------------------
def render(pool: str, fmt: str, ms: list[PoolMember], now: datetime) -> str:
    if fmt == "env":
        secrets = [m.secret.reveal() for m in ms]
        lines = [
            f"# keywatch pool {pool}, {len(ms)} keys, best first; written {now.isoformat()}",
            f"KEYWATCH_POOL_KEY={secrets[0] if secrets else ''}",
            f"KEYWATCH_POOL_KEYS={','.join(secrets)}",
            f"KEYWATCH_POOL_NAMES={','.join(m.name for m in ms)}",
            f"KEYWATCH_POOL_SIZE={len(ms)}",
        ]
        return "\n".join(lines) + "\n"
    body = {
        "pool": pool,
        "updated_at": now.isoformat(),
        "keys": [
            {"name": m.name, "provider": m.provider, "secret": m.secret.reveal(), "base_url": m.base_url}
            for m in ms
        ],
    }
    return json.dumps(body, indent=2) + "\n"


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """A reader sees the old file or the new one, never half of either: temp file in the same
    directory, fsync, rename over, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class FilePublisher:
    target = "file"

    def __init__(self, cfg: FileTarget) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self._last: str | None = None

    async def publish(self, pool: str, ms: list[PoolMember]) -> None:
        digest = _digest(ms)
        if digest == self._last and self.path.exists():
            return
        text = render(pool, self.cfg.format, ms, datetime.now(UTC))
        try:
            await asyncio.to_thread(write_atomic, self.path, text)
        except OSError as exc:
            raise PublishError(f"cannot write {self.path}: {exc.strerror or type(exc).__name__}") from None
        self._last = digest

    async def aclose(self) -> None:
        return None


# -- redis ---------------------------------------------------------------------------------------------
def redis_url(ref: str) -> str:
    if ref.startswith(("redis://", "rediss://", "unix://")):
        return ref
    from keywatch.settings import secrets

    return secrets.resolve(ref).reveal()


class RedisPublisher:
    """A Redis set per pool (SRANDMEMBER takes one), replaced in one MULTI/EXEC so no reader sees it empty
    half-way; `ranked` adds a sorted set `<key>:ranked` scored best-first."""

    target = "redis"

    def __init__(self, cfg: RedisTarget) -> None:
        self.cfg = cfg
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError:
                raise PublishError("the redis package is missing: pip install 'keywatch[redis]'") from None
            try:
                url = redis_url(self.cfg.url)
            except Exception as exc:
                raise PublishError(f"redis url: {exc}") from None
            self._client = aioredis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        return self._client

    async def publish(self, pool: str, ms: list[PoolMember]) -> None:
        client = self._get()
        key = self.cfg.key
        try:
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if ms:
                    pipe.sadd(key, *[m.secret.reveal() for m in ms])
                if self.cfg.ranked:
                    pipe.delete(f"{key}:ranked")
                    if ms:
                        pipe.zadd(f"{key}:ranked", {m.secret.reveal(): i for i, m in enumerate(ms)})
                await pipe.execute()
        except Exception as exc:  # redis.RedisError, OSError: the target is down, the daemon is not
            raise PublishError(f"redis {key}: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        if self._client is not None:
            try:
                await self._client.aclose()
            except Exception as exc:
                log.debug("redis_close_failed", error=type(exc).__name__)
            self._client = None


def _digest(ms: list[PoolMember]) -> str:
    h = hashlib.sha256()
    for m in ms:
        h.update(f"{m.name}\0{m.secret.fingerprint}\0{m.base_url}\n".encode())
    return h.hexdigest()


# -- manager -------------------------------------------------------------------------------------------
# The managers alive in this process (the policy capability's, one per daemon): a rotation's promote
# reaches them through `promoted()` without the rotation capability holding the engine's objects.
_MANAGERS: weakref.WeakSet[PoolManager] = weakref.WeakSet()


class PoolManager:
    """Keeps one publisher per pool target and publishes every pool each cycle.

    A rotation's promote (`promote`) republishes at once every pool that holds the key, with the new
    secret, and keeps using the new secret for that key while the inventory still carries the old one
    (until the daemon has re-read its key secrets), so a cycle in between never puts the old key back."""

    def __init__(self, metrics: Any | None = None) -> None:
        self.metrics = metrics
        self._publishers: dict[str, tuple[PoolConfig, list[Any]]] = {}
        self.current: dict[str, list[str]] = {}
        self._retired: list[Any] = []
        self._members: dict[str, list[PoolMember]] = {}  # pool -> what was last published
        self._promoted: dict[str, tuple[str, Secret]] = {}  # key -> (old fingerprint, new secret)
        _MANAGERS.add(self)

    def _with_promoted(self, keys: list[ManagedKey]) -> list[ManagedKey]:
        if not self._promoted:
            return keys
        out = []
        for k in keys:
            swap = self._promoted.get(k.name)
            if swap is not None and k.secret is not None:
                if k.secret.fingerprint == swap[0]:
                    k = replace(k, secret=swap[1])  # the inventory has not caught up yet
                else:
                    del self._promoted[k.name]  # the inventory holds the new (or another) value now
            out.append(k)
        return out

    async def _publish_to(self, pool: PoolConfig, ms: list[PoolMember]) -> None:
        for t in self._targets(pool):
            try:
                await t.publish(pool.name, ms)
            except PublishError as exc:
                log.warning("pool_publish_failed", pool=pool.name, target=t.target, error=str(exc))
                if self.metrics is not None:
                    self.metrics.pool_errors.labels(pool.name, t.target).inc()

    async def promote(self, key: str, old_fingerprint: str, secret: Secret) -> list[str]:
        """`key`'s credential was replaced by `secret`: republish now every pool that holds it; returns
        their names."""
        self._promoted[key] = (old_fingerprint, secret)
        done = []
        for name, (pool, _) in list(self._publishers.items()):
            ms = self._members.get(name) or []
            if not any(m.name == key for m in ms):
                continue
            ms = [replace(m, secret=secret) if m.name == key else m for m in ms]
            self._members[name] = ms
            await self._publish_to(pool, ms)
            done.append(name)
        return done

    def _targets(self, pool: PoolConfig) -> list[Any]:
        known = self._publishers.get(pool.name)
        if known is not None and known[0] == pool:
            return known[1]
        targets: list[Any] = []
        if pool.redis is not None:
            targets.append(RedisPublisher(pool.redis))
        if pool.file is not None:
            targets.append(FilePublisher(pool.file))
        if known is not None:
            self._retired.extend(known[1])
        self._publishers[pool.name] = (pool, targets)
        return targets

    async def publish_all(
        self,
        pools: Iterable[PoolConfig],
        keys: list[ManagedKey],
        states: Mapping[str, Any],
        signals: Mapping[str, Any],
        holds: PoolHolds | None = None,
    ) -> dict[str, tuple[list[str], list[str]]]:
        """Publish each pool; returns {pool: (joined, left)} for pools whose membership changed."""
        changes: dict[str, tuple[list[str], list[str]]] = {}
        retired, self._retired = self._retired, []
        for t in retired:
            await t.aclose()
        keys = self._with_promoted(keys)
        for pool in pools:
            ms = members(pool, keys, states, signals, holds)
            names = [m.name for m in ms]
            before = self.current.get(pool.name)
            if before is not None and set(before) != set(names):
                changes[pool.name] = (sorted(set(names) - set(before)), sorted(set(before) - set(names)))
            self.current[pool.name] = names
            if self.metrics is not None:
                self.metrics.pool_size.labels(pool.name).set(len(ms))
            self._members[pool.name] = ms
            await self._publish_to(pool, ms)
        return changes

    async def aclose(self) -> None:
        for _, targets in self._publishers.values():
            for t in targets:
                await t.aclose()
        self._publishers.clear()
        _MANAGERS.discard(self)


async def promoted(key: str, old_fingerprint: str, secret: Secret) -> list[str]:
    """A rotation promoted `secret` for `key`: every pool of this process holding the key is republished
    now; returns the pools' names."""
    done: list[str] = []
    for manager in list(_MANAGERS):
        done += await manager.promote(key, old_fingerprint, secret)
    return done
