"""What the simulator knows: the keys it answers for and what it has been asked.

Plain data mutated only on the simulator's event loop, so handlers never need a lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from keywatch.domain import fingerprint, mask

# What a key does when probed. Provider route modules decide which of these their API can show and how.
BEHAVIOURS: frozenset[str] = frozenset(
    {
        "healthy",
        "invalid",
        "deactivated",
        "quota_exhausted",
        "rate_limited",
        "server_error",
        "overloaded",
        "forbidden",
        "missing_scope",
        "model_not_found",
        "billing_not_active",
        "account_deactivated",
        "slow",  # answers healthy after extra["delay_s"] (default 30 s): longer than any probe timeout
        "hang",  # never answers; the handler ends when the client gives up
        "bad_body",  # 200 with a body that is not the documented shape
        "disconnect",  # the connection is closed without an answer
        "admin",  # an organization admin key: may call management endpoints
        # hostile answers (sim.common.hostile_answer), on every route, whatever the provider:
        "huge",  # a 200 MiB JSON model list, streamed
        "gzip_bomb",  # a 1 MB gzip stream (Content-Encoding: gzip) that decodes to 1 GiB
        "endless",  # a JSON model list that never ends
        "slowloris",  # headers, then one byte a second, forever
        "deep_json",  # a 200 kB model list nested 100 000 deep
        "redirect_away",  # 302 to another host
    }
)
HOSTILE: frozenset[str] = frozenset({"huge", "gzip_bomb", "endless", "slowloris", "deep_json", "redirect_away"})


@dataclass(slots=True)
class SimKey:
    """One secret the simulator recognises; `extra` carries provider specifics (balance, key_id ...)."""

    secret: str
    provider: str
    behaviour: str = "healthy"
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # A credential the provider just created works only from this unix time on (propagation); until then
    # every route answers it as the provider answers a wrong key.
    not_before: float | None = None

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(
                f"unknown behaviour {self.behaviour!r} for key {mask(self.secret)}; "
                f"valid: {', '.join(sorted(BEHAVIOURS))}"
            )

    def describe(self) -> dict[str, Any]:
        """What the control API may show: never the secret itself."""
        return {
            "masked": mask(self.secret),
            "fingerprint": fingerprint(self.secret),
            "provider": self.provider,
            "behaviour": self.behaviour,
            "latency_ms": self.latency_ms,
            "extra": self.extra,
            "not_before": self.not_before,
        }

    def propagated(self, now: float) -> bool:
        return self.not_before is None or now >= self.not_before


@dataclass(slots=True)
class SimState:
    keys: dict[str, SimKey] = field(default_factory=dict)
    default_latency_ms: float = 0.0
    requests: dict[tuple[str, str], int] = field(default_factory=dict)  # (provider, route) -> count
    requests_by_secret: dict[str, int] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)  # secret -> unix time of its last request
    admin: dict[str, Any] = field(default_factory=dict)  # per-provider management data, e.g. admin["openai"]
    # Seconds a credential created or regenerated through a management route takes to start working.
    propagation_delay_s: float = 0.0

    def upsert(self, key: SimKey) -> SimKey:
        self.keys[key.secret] = key
        return key

    def created(self, key: SimKey) -> SimKey:
        """Add a credential a management route just made: it works after the propagation delay."""
        if self.propagation_delay_s > 0:
            key.not_before = time.time() + self.propagation_delay_s
        return self.upsert(key)

    def reset(self) -> None:
        """Forget keys, management data and counters: a clean slate between tests."""
        self.keys.clear()
        self.admin.clear()
        self.propagation_delay_s = 0.0
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests.clear()
        self.requests_by_secret.clear()
        self.last_used.clear()

    def latency_for(self, key: SimKey | None) -> float:
        if key is not None and key.latency_ms is not None:
            return key.latency_ms
        return self.default_latency_ms

    def count(self, provider: str, route: str, secret: str | None, now: float, *, used: bool = True) -> None:
        """Count a request; `used` (a known, propagated key) also makes it the key's last use."""
        slot = (provider, route)
        self.requests[slot] = self.requests.get(slot, 0) + 1
        if secret is not None:
            self.requests_by_secret[secret] = self.requests_by_secret.get(secret, 0) + 1
            if used:
                self.last_used[secret] = now

    def provider_data(self, provider: str) -> dict[str, Any]:
        return self.admin.setdefault(provider, {})

    def stats(self) -> dict[str, Any]:
        """Counters keyed by fingerprint, so the answer can be logged or shown without leaking a secret."""
        return {
            "total": sum(self.requests.values()),
            "by_route": [
                {"provider": provider, "route": route, "count": n}
                for (provider, route), n in sorted(self.requests.items())
            ],
            "by_key": {
                fingerprint(secret): {
                    "masked": mask(secret),
                    "count": n,
                    "known": secret in self.keys,
                }
                for secret, n in self.requests_by_secret.items()
            },
        }
