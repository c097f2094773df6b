"""Plain data that flows between detection, decision and action.

Nothing here does I/O; every other module speaks in these types.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Health(StrEnum):
    """What the last probe saw. Only INVALID, QUOTA_EXHAUSTED and FORBIDDEN say something about the key."""

    HEALTHY = "healthy"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    PROVIDER_ERROR = "provider_error"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"  # never probed yet

    @property
    def is_up(self) -> bool:
        return self in (Health.HEALTHY, Health.RATE_LIMITED)

    @property
    def blames_key(self) -> bool:
        return self in (Health.INVALID, Health.QUOTA_EXHAUSTED, Health.FORBIDDEN)


PROBED_HEALTH_VALUES: tuple[Health, ...] = tuple(h for h in Health if h is not Health.UNKNOWN)


class AdminState(StrEnum):
    """What keywatch or a person decided about a key; independent of health."""

    ACTIVE = "active"
    DISABLED = "disabled"
    ROTATING = "rotating"
    RETIRED = "retired"


def fingerprint(secret: str) -> str:
    """A stable, non-reversible identifier for a secret: sha256 prefix."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


_PUBLIC_PREFIX: re.Pattern[str] | None = None


def use_key_prefixes(prefixes: Iterable[str]) -> None:
    """The providers' public key prefixes (regular expressions, the most specific first), which masked forms
    keep. providers/registry.py sets them from each ProviderInfo when keywatch is imported."""
    global _PUBLIC_PREFIX
    alternatives = "|".join(f"(?:{p})" for p in prefixes)
    _PUBLIC_PREFIX = re.compile(f"^({alternatives})") if alternatives else None


def is_public_prefix(text: str) -> bool:
    """True when `text` is all a provider's public key prefix (`sk-proj-`): masked forms show it."""
    return _PUBLIC_PREFIX is not None and bool(_PUBLIC_PREFIX.fullmatch(text))


def public_prefix_length(secret: str) -> int:
    """How many of `secret`'s first characters are a provider's public key prefix (8 for `sk-proj-...`)."""
    m = _PUBLIC_PREFIX.match(secret) if _PUBLIC_PREFIX is not None else None
    return m.end(1) if m else 0


def mask(secret: str) -> str:
    """`sk-proj-...GDYA`: the provider's public prefix and the last four characters, as providers show them."""
    if len(secret) <= 12:
        return "****"
    return f"{secret[:public_prefix_length(secret) or 2]}...{secret[-4:]}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset_seconds: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests_remaining": self.requests_remaining,
            "tokens_remaining": self.tokens_remaining,
            "requests_reset_seconds": self.requests_reset_seconds,
            "tokens_reset_seconds": self.tokens_reset_seconds,
        }


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe of one key. `error_message` is already masked by the adapter/prober."""

    key: str
    provider: str
    health: Health
    checked_at: datetime
    latency_ms: float
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    ratelimit: RateLimit | None = None
    retry_after_seconds: float | None = None
    compromised: bool = False
    compromise_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # provider-specific, e.g. balance, limit_remaining


@dataclass(frozen=True, slots=True)
class KeyState:
    """The current picture of one key, as the store and the metrics see it."""

    key: str
    provider: str
    fingerprint: str
    masked: str
    health: Health = Health.UNKNOWN
    admin_state: AdminState = AdminState.ACTIVE
    health_since: datetime | None = None
    last_probe_at: datetime | None = None
    consecutive: int = 0  # probes in a row with the current health
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    latency_ms: float | None = None
    ratelimit: RateLimit | None = None
    compromised: bool = False
    compromise_reason: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of health of one key. Samples that change nothing are not transitions."""

    key: str
    provider: str
    old: Health
    new: Health
    at: datetime
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class AdminInfo:
    """The last admin decision about a key: what, by whom (a policy or `operator:<name>`), why, when."""

    state: AdminState
    actor: str | None
    reason: str | None
    changed_at: datetime | None


@dataclass(frozen=True, slots=True)
class Rollup:
    """Probe counts and latency of one key, one hour and one health (slots: one per key each cycle)."""

    key: str
    hour: datetime
    health: str
    count: int
    latency_sum_ms: float
    latency_max_ms: float


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the audit trail."""

    at: datetime
    kind: str
    key: str | None
    actor: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class Signal(StrEnum):
    """Facts about a key that one part of keywatch raises for others (SignalBoard); policies name them in
    `when.signals`, and a key carrying one leaves every pool."""

    BUDGET_EXHAUSTED = "budget_exhausted"  # keywatch's own budget for the key is spent
    COMPROMISED = "compromised"  # exposed: the provider says so (AWS quarantine) or a leak report matched
    # usage far above the key's own baseline (usage.anomaly): a warning; unlike the others it keeps the key
    # in its pools, and acts only through a policy that names it
    USAGE_ANOMALY = "usage_anomaly"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Alert:
    """Something a person should hear about. `identity` names what and which (dedup key), e.g.
    `key_health:openai-prod` or `provider_outage:openai`; the same identity firing again is a repeat."""

    identity: str
    severity: Severity
    firing: bool  # False: resolved
    title: str
    summary: str
    at: datetime
    key: str | None = None
    provider: str | None = None
    labels: dict[str, str] = field(default_factory=dict)  # routing: team, env, ...
    fields: dict[str, str] = field(default_factory=dict)  # health, transition, masked, fingerprint, action ...


class Secret:
    """A resolved secret. It lives only in memory: printing, logging or putting it in an exception shows
    its masked form, and it refuses to be pickled."""

    __slots__ = ("_value", "fingerprint", "masked")

    def __init__(self, value: str) -> None:
        self._value = value
        self.fingerprint = fingerprint(value)
        self.masked = mask(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.masked})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # refuse to be pickled into a job store or a cache
        raise TypeError("a Secret cannot be serialised")


@dataclass(frozen=True)
class Account:
    """Management credentials for one provider account (admin key, ARM, IAM ...)."""

    name: str
    provider: str
    admin_secret: Secret | None = None
    base_url: str | None = None
    allow_destructive: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Account({self.name!r}, {self.provider!r})"


@dataclass(frozen=True, slots=True)
class ManagedKey:
    """One key of the inventory, with its secret resolved (slots: there are thousands)."""

    name: str
    provider: str
    secret: Secret | None  # None for deferred references, e.g. `azure:key1`
    secret_ref: str
    base_url: str | None = None
    probe: str = "models"
    model: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    account: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extra_secrets: dict[str, Secret] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.secret.fingerprint if self.secret else f"ref:{self.secret_ref}"

    @property
    def masked(self) -> str:
        return self.secret.masked if self.secret else self.secret_ref

    def __repr__(self) -> str:
        return f"ManagedKey({self.name!r}, {self.provider!r}, {self.masked})"
