"""Provider outages: when many keys of one provider (or one base URL) fail at once, the provider is down,
not the keys.

During an outage key-level actions for that provider are suspended and the probes of its keys do not
count toward the streaks that disable a key (`KeyView.counted_probes`). Detection is pure; OutageTracker
holds the little state that makes "one alert, one recovery" out of many cycles.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from keywatch.domain import Health
from keywatch.engine.policy_config import OutageSettings

OUTAGE_HEALTH = frozenset({Health.PROVIDER_ERROR, Health.UNREACHABLE})


class Probed(Protocol):
    """What detection reads of one probe: a ProbeResult, or the state it left (KeyState)."""

    @property
    def key(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def health(self) -> Health: ...


@dataclass(frozen=True)
class OutageFinding:
    provider: str
    failed: int
    total: int
    keys: frozenset[str]  # the keys whose actions are suspended
    scope: str  # "provider" or the base URL that failed

    def describe(self) -> str:
        where = "" if self.scope == "provider" else f" at {self.scope}"
        return (
            f"{self.failed} of {self.total} {self.provider} keys{where} failed with provider_error or "
            "unreachable"
        )


def detect(
    results: Iterable[Probed], base_urls: Mapping[str, str], settings: OutageSettings
) -> dict[str, OutageFinding]:
    """Providers in outage this cycle, from what its probes found. `base_urls` maps a key to the URL it
    talks to."""
    if not settings.enabled:
        return {}
    groups: dict[tuple[str, str], list[Probed]] = {}
    for r in results:
        groups.setdefault((r.provider, "provider"), []).append(r)
        url = base_urls.get(r.key)
        if url:
            groups.setdefault((r.provider, url), []).append(r)
    found: dict[str, OutageFinding] = {}
    for (provider, scope), rs in sorted(groups.items(), key=lambda kv: kv[0][1] != "provider"):
        failed = [r for r in rs if r.health in OUTAGE_HEALTH]
        # Both: enough keys failing (below that, each key's own hysteresis decides) and the fraction.
        if len(failed) < settings.min_keys or len(failed) < settings.threshold * len(rs):
            continue
        prev = found.get(provider)
        keys = frozenset(r.key for r in rs)
        if prev is None:
            found[provider] = OutageFinding(provider, len(failed), len(rs), keys, scope)
        elif not keys <= prev.keys:
            found[provider] = OutageFinding(provider, prev.failed, prev.total, prev.keys | keys, prev.scope)
    return found


@dataclass
class OutageTracker:
    """Ongoing outages and, per key, how much of its current streak happened during one."""

    ongoing: dict[str, tuple[datetime, OutageFinding]] = field(default_factory=dict)
    discounted: dict[str, int] = field(default_factory=dict)  # probes of the streak made during an outage
    counted_since: dict[str, datetime] = field(default_factory=dict)

    def update(
        self, found: Mapping[str, OutageFinding], now: datetime
    ) -> tuple[list[OutageFinding], list[tuple[OutageFinding, datetime]]]:
        """Record this cycle's findings; returns (started, ended-with-start-time)."""
        started, ended = [], []
        for provider, f in found.items():
            if provider not in self.ongoing:
                started.append(f)
                self.ongoing[provider] = (now, f)
            else:
                self.ongoing[provider] = (self.ongoing[provider][0], f)
        for provider in [p for p in self.ongoing if p not in found]:
            since, f = self.ongoing.pop(provider)
            ended.append((f, since))
        return started, ended

    def suspended_keys(self) -> frozenset[str]:
        out: set[str] = set()
        for _, f in self.ongoing.values():
            out |= f.keys
        return frozenset(out)

    def count_probe(self, key: str, consecutive: int, in_outage: bool, now: datetime) -> None:
        """Called once per probed key per cycle, after the state tracker applied the result."""
        if consecutive <= 1:
            self.discounted.pop(key, None)
            self.counted_since.pop(key, None)
        if in_outage:
            self.discounted[key] = self.discounted.get(key, 0) + 1
            self.counted_since[key] = now

    def counted(self, key: str, consecutive: int) -> int:
        return max(0, consecutive - self.discounted.get(key, 0))


def from_stored(rows: Mapping[str, tuple[datetime, str, int, int]]) -> dict[str, tuple[datetime, OutageFinding]]:
    """Store.open_outages() as the tracker holds them."""
    return {p: (since, OutageFinding(p, failed, total, frozenset(), scope)) for p, (since, scope, failed, total)
            in rows.items()}
