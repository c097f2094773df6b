"""Pure decisions: which policy wants what done to which key, and what the safety catches allow.

Nothing here does I/O or reads the clock: `now` is passed in, so every rule is a table-driven test.
The engine is level-triggered: each cycle every key is matched against every policy, and the executor
skips what is already done (a disable of a disabled key is a no-op). Alerts are edge-triggered through
AlertBook, so a key matching for many cycles (or flapping) keeps one alert firing, not one per cycle.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase

from keywatch.domain import AdminState, Severity
from keywatch.engine.model import AlertWish, Decision, KeyView, is_operator
from keywatch.engine.policy_config import Conditions, PolicyConfig, SafetySettings


def matches(c: Conditions, v: KeyView, now: datetime) -> bool:
    st = v.state
    if c.health is not None and str(st.health) not in c.health:
        return False
    if c.changed_to is not None and (v.changed_from is None or str(st.health) not in c.changed_to):
        return False
    if c.changed_from is not None and (v.changed_from is None or str(v.changed_from) not in c.changed_from):
        return False
    if c.for_probes is not None and v.probes < c.for_probes:
        return False
    if c.for_duration is not None and (v.since is None or (now - v.since).total_seconds() < c.for_duration):
        return False
    if c.provider is not None and st.provider not in c.provider:
        return False
    if c.labels is not None and any(st.labels.get(k) != val for k, val in c.labels.items()):
        return False
    if c.keys is not None and not any(fnmatchcase(st.key, p) for p in c.keys):
        return False
    if c.signals is not None and not (v.all_signals & set(c.signals)):
        return False
    if c.compromised is not None and st.compromised != c.compromised:
        return False
    if c.admin_state is not None and str(st.admin_state) not in c.admin_state:
        return False
    if c.disabled_by is not None:
        if st.admin_state is not AdminState.DISABLED:
            return False
        by_operator = is_operator(v.admin_actor)
        if (c.disabled_by == "keywatch" and by_operator) or (c.disabled_by == "operator" and not by_operator):
            return False
    return True


def explain(c: Conditions, v: KeyView, now: datetime) -> str:
    """Why a key matched, in words an operator reads in `keywatch events`."""
    st = v.state
    parts = []
    if c.health is not None or c.changed_to is not None:
        detail = ", ".join(
            x for x in (f"http {st.http_status}" if st.http_status else "", st.error_code or "") if x
        )
        parts.append(f"health {st.health}" + (f" ({detail})" if detail else ""))
    if c.changed_from is not None or c.changed_to is not None:
        parts.append(f"changed from {v.changed_from}")
    if c.for_probes is not None:
        parts.append(f"for {v.probes} probes in a row")
    if c.for_duration is not None and v.since is not None:
        from keywatch.durations import format_duration

        parts.append(f"for {format_duration((now - v.since).total_seconds())}")
    sig = sorted(v.all_signals & set(c.signals or ()))
    if sig:
        parts.append(
            "signal " + ", ".join(sig) + (f" ({st.compromise_reason})" if st.compromise_reason else "")
        )
    elif c.compromised:
        parts.append("compromised" + (f" ({st.compromise_reason})" if st.compromise_reason else ""))
    if c.disabled_by is not None:
        parts.append(f"disabled by {v.admin_actor or 'keywatch'}")
    return ", ".join(parts) or "conditions matched"


def decide(
    policies: Iterable[PolicyConfig], views: Mapping[str, KeyView], now: datetime, *, dry_run: bool = False
) -> tuple[list[Decision], set[tuple[str, str]]]:
    """Every action every enabled policy wants now, and the (policy, key) pairs that matched.

    Keys of a provider in outage are skipped entirely: their failures say nothing about the key.
    """
    decisions: list[Decision] = []
    matched: set[tuple[str, str]] = set()
    for p in policies:
        if not p.enabled:
            continue
        for v in views.values():
            if v.in_outage or not matches(p.when, v, now):
                continue
            matched.add((p.name, v.key))
            reason = explain(p.when, v, now)
            for a in p.action_list:
                decisions.append(Decision(p.name, v.key, v.state.provider, a, reason, dry_run or p.dry_run))
    return decisions, matched


def needed(d: Decision, v: KeyView) -> bool:
    """False when the action is already done or would undo a person's decision (idempotence)."""
    from keywatch.engine import actions

    action = actions.get(d.kind)
    if action.admin and v.operator_holds:
        return False
    return action.needed(d.action, v)


def counted(d: Decision) -> bool:
    """The action changes something outside keywatch's own bookkeeping: it counts toward the blast radius."""
    from keywatch.engine import actions

    return actions.get(d.kind).counted


# -- built-in policies ---------------------------------------------------------------------------------
def default_policies(s: SafetySettings) -> list[PolicyConfig]:
    """The safe defaults: disable what is dead, pull what is exhausted, warn about what is merely unlucky."""
    specs: list[dict[str, object]] = [
        {
            "name": "default-disable-invalid",
            "description": f"invalid for {s.disable_after_probes} probes in a row",
            "when": {"health": "invalid", "for_probes": s.disable_after_probes},
            "actions": [{"type": "disable"}, {"type": "alert", "severity": "critical"}],
        },
        {
            "name": "default-disable-compromised",
            "description": "the provider reports the key as exposed",
            "when": {"signals": ["compromised"]},
            "actions": [{"type": "disable"}, {"type": "alert", "severity": "critical"}],
        },
        {
            "name": "default-quota-exhausted",
            "description": "no quota or credit left",
            "when": {"health": "quota_exhausted"},
            "actions": [{"type": "pool_remove"}, {"type": "alert", "severity": "warning"}],
        },
        {
            "name": "default-forbidden",
            "description": "the key authenticates but may not do this (scope, model, region)",
            "when": {"health": "forbidden"},
            "actions": [{"type": "pool_remove"}, {"type": "alert", "severity": "warning"}],
        },
        {
            "name": "default-budget-exhausted",
            "description": "keywatch's own budget for the key is spent",
            "when": {"signals": ["budget_exhausted"]},
            "actions": [
                {"type": "pool_remove"},
                {"type": "alert", "severity": "warning", "identity": "budget:{key}"},
            ],
        },
        {
            "name": "default-rate-limited",
            "description": "rate limited for a long time",
            "when": {"health": "rate_limited", "for_duration": s.rate_limited_warn_after},
            "actions": [{"type": "alert", "severity": "warning"}],
        },
    ]
    if s.auto_enable:
        specs.append(
            {
                "name": "default-enable-recovered",
                "description": f"keywatch disabled it and it is healthy for {s.enable_after_probes} probes",
                "when": {"health": "healthy", "for_probes": s.enable_after_probes, "disabled_by": "keywatch"},
                "actions": [{"type": "enable"}],
            },
        )
    return [PolicyConfig.model_validate(x) for x in specs]


def effective_policies(written: list[PolicyConfig], s: SafetySettings) -> list[PolicyConfig]:
    if s.default_policies == "never" or (s.default_policies == "when_empty" and written):
        return list(written)
    names = {p.name for p in written}
    return list(written) + [p for p in default_policies(s) if p.name not in names]


# -- safety catches ------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """When each policy acted in the last hour (counted actions only)."""

    times: dict[str, deque[datetime]] = field(default_factory=dict)

    def count(self, policy: str, now: datetime) -> int:
        q = self.times.get(policy)
        if not q:
            return 0
        while q and now - q[0] >= timedelta(hours=1):
            q.popleft()
        return len(q)

    def add(self, policy: str, at: datetime) -> None:
        self.times.setdefault(policy, deque()).append(at)


@dataclass(frozen=True)
class Blocked:
    decision: Decision
    why: str


# The absolute floor of the fleet-share limit: a fleet of 9 keys at 10% may still lose a dead key and act on
# a second one.
DISABLE_FLOOR = 2


def disable_limit(fleet_size: int, max_percent: float) -> int:
    """Keys keywatch may hold disabled at once: the share of the fleet, or DISABLE_FLOOR keys, whichever is
    more."""
    return max(DISABLE_FLOOR, math.floor(fleet_size * max_percent / 100 + 1e-9))


def apply_limits(
    decisions: list[Decision],
    *,
    ledger: Ledger,
    now: datetime,
    policy_limits: Mapping[str, int],
    fleet_size: int,
    disabled_by_keywatch: int,
    max_disabled_percent: float,
    contained: frozenset[str] = frozenset(),
) -> tuple[list[Decision], list[Blocked]]:
    """Split wanted actions into allowed and blocked by the blast-radius catches.

    The fleet share is checked for the cycle as a whole: if this cycle's disables would take keywatch
    past the limit, none of them runs. A broken adapter calling every key invalid so disables nothing.

    Keys in `contained` (compromised) are exempt: taking an exposed key out of service is containment, not
    housekeeping, and has its own ceiling where the signal is raised (keywatch.leaks).
    """
    allowed: list[Decision] = []
    blocked: list[Blocked] = []
    live = [d for d in decisions if not d.dry_run]
    from keywatch.engine import actions

    removes = {d.kind for d in decisions if actions.get(d.kind).removes_key}
    new_disabled = {d.key for d in live if d.kind in removes and d.key not in contained}
    limit = disable_limit(fleet_size, max_disabled_percent)
    over_fleet = bool(new_disabled) and disabled_by_keywatch + len(new_disabled) > limit
    pending: dict[str, int] = {}
    for d in decisions:
        if d.dry_run or not counted(d) or (d.key in contained and d.kind in removes):
            allowed.append(d)
            continue
        if over_fleet and d.kind in removes:
            blocked.append(
                Blocked(
                    d,
                    (
                        f"blast radius: {disabled_by_keywatch} keys already disabled by keywatch + "
                        f"{len(new_disabled)} now "
                        f"would exceed {max_disabled_percent:g}% of {fleet_size} keys (limit {limit}, at least "
                        f"{DISABLE_FLOOR}); to allow more, raise safety.max_disabled_percent"
                    ),
                )
            )
            continue
        used = ledger.count(d.policy, now) + pending.get(d.policy, 0)
        cap = policy_limits.get(d.policy, 20)
        if used >= cap:
            blocked.append(
                Blocked(
                    d,
                    f"blast radius: policy {d.policy} already took {used} actions in the last "
                    f"hour (limit {cap}); to allow more, raise max_actions_per_hour of the policy or "
                    "safety.max_actions_per_policy_per_hour",
                )
            )
            continue
        pending[d.policy] = pending.get(d.policy, 0) + 1
        allowed.append(d)
    return allowed, blocked


# -- alerts and pool holds -----------------------------------------------------------------------------
_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


@dataclass
class AlertChange:
    firing: bool
    wish: AlertWish


@dataclass
class AlertBook:
    """Which policy alerts are firing. An identity fires once, re-fires only to raise its severity, and
    resolves after `clear_after` cycles in which no policy wanted it."""

    clear_after: int = 3
    firing: dict[str, AlertWish] = field(default_factory=dict)
    quiet: dict[str, int] = field(default_factory=dict)

    def update(self, wishes: Iterable[AlertWish]) -> list[AlertChange]:
        changes: list[AlertChange] = []
        wanted: dict[str, AlertWish] = {}
        for w in wishes:
            cur = wanted.get(w.identity)
            if cur is None or _SEVERITY_RANK[w.severity] > _SEVERITY_RANK[cur.severity]:
                wanted[w.identity] = w
        for identity, w in wanted.items():
            self.quiet.pop(identity, None)
            cur = self.firing.get(identity)
            if cur is None or _SEVERITY_RANK[w.severity] > _SEVERITY_RANK[cur.severity]:
                self.firing[identity] = w
                changes.append(AlertChange(True, w))
        for identity in [i for i in self.firing if i not in wanted]:
            n = self.quiet.get(identity, 0) + 1
            if n >= self.clear_after:
                changes.append(AlertChange(False, self.firing.pop(identity)))
                self.quiet.pop(identity, None)
            else:
                self.quiet[identity] = n
        return changes


__all__ = [
    "AlertBook",
    "AlertChange",
    "AlertWish",
    "Blocked",
    "Decision",
    "KeyView",
    "Ledger",
    "apply_limits",
    "counted",
    "decide",
    "default_policies",
    "disable_limit",
    "effective_policies",
    "explain",
    "is_operator",
    "matches",
    "needed",
]
