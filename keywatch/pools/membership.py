"""Who belongs in a pool: pure selection and ordering over the key states of this cycle."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from keywatch.domain import AdminState, Health, KeyState, ManagedKey, Secret, Signal
from keywatch.pools.config import PoolConfig

BLOCKING_SIGNALS = frozenset(str(s) for s in Signal if s is not Signal.USAGE_ANOMALY)  # a warning only


@dataclass(frozen=True)
class PoolHolds:
    """Pool membership a matching policy imposes: `removed[key]` is a set of pool names ("*" = every pool)."""

    removed: dict[str, frozenset[str]] = field(default_factory=dict)
    added: dict[str, frozenset[str]] = field(default_factory=dict)

    def excludes(self, key: str, pool: str) -> bool:
        r = self.removed.get(key, frozenset())
        return "*" in r or pool in r

    def includes(self, key: str, pool: str) -> bool:
        return pool in self.added.get(key, frozenset())


@dataclass(frozen=True)
class PoolMember:
    name: str
    provider: str
    secret: Secret
    base_url: str | None
    score: float  # lower is better

    def __repr__(self) -> str:
        return f"PoolMember({self.name!r}, {self.secret.masked})"


def selects(pool: PoolConfig, key: ManagedKey) -> bool:
    if pool.provider is not None and key.provider not in pool.provider:
        return False
    if pool.labels is not None and any(key.labels.get(k) != v for k, v in pool.labels.items()):
        return False
    return pool.keys is None or any(fnmatchcase(key.name, p) for p in pool.keys)


def eligible(pool: PoolConfig, st: KeyState | None, signals: frozenset[str]) -> bool:
    """Only keys that work right now: healthy, active, not exposed, not over budget."""
    if st is None or st.admin_state is not AdminState.ACTIVE or st.compromised:
        return False
    if signals & BLOCKING_SIGNALS:
        return False
    return st.health is Health.HEALTHY or (pool.include_rate_limited and st.health is Health.RATE_LIMITED)


def order_key(pool: PoolConfig, st: KeyState) -> float:
    if pool.order == "latency":
        return st.latency_ms if st.latency_ms is not None else float("inf")
    if pool.order == "headroom":
        rl = st.ratelimit
        if rl is None:
            return float("inf")
        if rl.requests_limit and rl.requests_remaining is not None:
            return -rl.requests_remaining / rl.requests_limit
        if rl.tokens_limit and rl.tokens_remaining is not None:
            return -rl.tokens_remaining / rl.tokens_limit
        if rl.requests_remaining is not None:
            return -float(rl.requests_remaining)
        return float("inf")
    return 0.0


def members(
    pool: PoolConfig,
    keys: Iterable[ManagedKey],
    states: Mapping[str, KeyState],
    signals: Mapping[str, frozenset[str] | set[str]],
    holds: PoolHolds | None = None,
) -> list[PoolMember]:
    holds = holds or PoolHolds()
    out = []
    for k in keys:
        if k.secret is None:
            continue
        if not (selects(pool, k) or holds.includes(k.name, pool.name)) or holds.excludes(k.name, pool.name):
            continue
        st = states.get(k.name)
        if not eligible(pool, st, frozenset(signals.get(k.name, ()))):
            continue
        assert st is not None
        out.append(PoolMember(k.name, k.provider, k.secret, k.base_url, order_key(pool, st)))
    out.sort(key=lambda m: (m.score, m.name))
    return out
