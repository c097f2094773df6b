"""The one place decisions are made: `plan_cycle` turns a cycle's key views into a `CyclePlan`.

The daemon runs it after every probe cycle and then carries the plan out (engine/service.py);
`keywatch policy test` runs it on the stored states and prints it. Both call this function with inputs
built the same way, so the preview cannot drift from what the daemon does. It is pure: no I/O, no clock
(`now` is an input), no state kept between calls (what the previous cycle saw comes in as `streaks`).

Each action shapes the plan through its module's `plan()` (engine/actions/): an alert adds an alert
wish, a pool action a pool hold, an action the executor runs goes through `act()` below, where
idempotence, a person's decisions, streaks, retry waits and then the blast-radius catches decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keywatch.domain import AdminInfo, AdminState, Health, KeyState
from keywatch.engine import actions
from keywatch.engine.model import AlertWish, Decision, KeyView, is_operator
from keywatch.engine.policy import Blocked, Ledger, apply_limits, decide, effective_policies
from keywatch.engine.policy_config import PolicyConfig, SafetySettings
from keywatch.pools.membership import PoolHolds

NO_SIGNALS: frozenset[str] = frozenset()

Tag = tuple[str, str, str]  # (policy, key, action)


def tag_of(d: Decision) -> Tag:
    return (d.policy, d.key, d.kind)


@dataclass(frozen=True)
class Skipped:
    decision: Decision
    why: str


@dataclass(frozen=True)
class Note:
    """Something to record once per streak of matching cycles (a dry run, a pool hold)."""

    decision: Decision
    message: str
    result: str


@dataclass
class CyclePlan:
    decisions: list[Decision]
    run: list[Decision]  # to execute now (dry runs included: the executor records them as such)
    blocked: list[Blocked]  # held back by the blast-radius catches, with why
    skipped: list[Skipped]  # wanted but not needed now, with why
    alerts: list[AlertWish]  # alerts that should be firing (the alert book turns them into raise/resolve)
    holds: PoolHolds  # pool membership the matching policies impose
    notes: list[Note]  # dry runs and pool holds to record, each once per streak
    streaks: frozenset[Tag]  # every (policy, key, action) that matched now: the next cycle's `streaks`
    first: frozenset[Tag]  # the tags that started matching in this cycle

    def status(self, d: Decision) -> str:
        """What the plan does with one decision, in the words `keywatch policy test` prints."""
        return self._status.get(id(d), "do")

    def __post_init__(self) -> None:
        st: dict[int, str] = {}
        for d in self.run:
            st[id(d)] = "dry run: record only" if d.dry_run else "do"
        for b in self.blocked:
            st[id(b.decision)] = "BLOCKED: " + b.why
        for s in self.skipped:
            st[id(s.decision)] = "nothing (" + s.why + ")"
        for d in self.decisions:
            if d.dry_run and id(d) not in st:
                st[id(d)] = "dry run: record only"
        self._status = st


class Builder:
    """What each action's `plan()` adds to (model.PlanBuilder)."""

    def __init__(self, now: datetime, streaks: frozenset[Tag], retry_after: Mapping[Tag, datetime]) -> None:
        self.now = now
        self.previous = streaks
        self.retry_after = retry_after
        self.wanted: list[Decision] = []
        self.skipped: list[Skipped] = []
        self.alerts: list[AlertWish] = []
        self.notes: list[Note] = []
        self.removed: dict[str, set[str]] = {}
        self.added: dict[str, set[str]] = {}

    def first(self, d: Decision) -> bool:
        return tag_of(d) not in self.previous

    def act(self, d: Decision, view: KeyView) -> None:
        action = actions.get(d.kind)
        tag = tag_of(d)
        if action.admin and view.operator_holds:
            self.skipped.append(Skipped(d, "a person's decision stands"))
        elif action.restores_key and "compromised" in view.all_signals:
            self.skipped.append(Skipped(d, "compromised: only a person re-enables it (keywatch enable "
                                           "--compromised-ok)"))
        elif not action.needed(d.action, view):
            self.skipped.append(Skipped(d, "already done"))
        elif (action.once_per_match or d.dry_run) and not self.first(d):
            self.skipped.append(Skipped(d, "already done while this matches"))
        elif (until := self.retry_after.get(tag)) is not None and until > self.now:
            self.skipped.append(Skipped(d, f"failed recently; tried again after {until:%H:%M:%S} UTC"))
        else:
            self.wanted.append(d)

    def alert(self, wish: AlertWish) -> None:
        self.alerts.append(wish)

    def note(self, d: Decision, message: str) -> None:
        if self.first(d):
            self.notes.append(Note(d, message, "dry_run" if d.dry_run else "ok"))

    def hold_out(self, key: str, pools: Iterable[str]) -> None:
        self.removed.setdefault(key, set()).update(pools)

    def hold_in(self, key: str, pools: Iterable[str]) -> None:
        self.added.setdefault(key, set()).update(pools)


@dataclass(frozen=True)
class CycleInputs:
    policies: list[PolicyConfig]  # as written; the built-in ones are added per safety.default_policies
    safety: SafetySettings
    views: Mapping[str, KeyView]
    fleet_size: int
    now: datetime
    ledger: Ledger = field(default_factory=Ledger)  # counted actions of the last hour, per policy
    streaks: frozenset[Tag] = frozenset()  # CyclePlan.streaks of the previous cycle
    retry_after: Mapping[Tag, datetime] = field(default_factory=dict)


def plan_cycle(inputs: CycleInputs) -> CyclePlan:
    policies = effective_policies(list(inputs.policies), inputs.safety)
    decisions, _ = decide(policies, inputs.views, inputs.now, dry_run=inputs.safety.dry_run)
    builder = Builder(inputs.now, inputs.streaks, inputs.retry_after)
    for d in decisions:
        actions.get(d.kind).plan(d, inputs.views[d.key], builder)
    safety = inputs.safety
    limits = {p.name: p.max_actions_per_hour or safety.max_actions_per_policy_per_hour for p in policies}
    disabled = sum(
        1 for v in inputs.views.values()
        if v.state.admin_state is AdminState.DISABLED and not is_operator(v.admin_actor)
    )
    run, blocked = apply_limits(
        builder.wanted, ledger=inputs.ledger, now=inputs.now, policy_limits=limits, fleet_size=inputs.fleet_size,
        disabled_by_keywatch=disabled, max_disabled_percent=safety.max_disabled_percent,
        contained=frozenset(k for k, v in inputs.views.items() if "compromised" in v.all_signals),
    )
    streaks = frozenset(tag_of(d) for d in decisions)
    return CyclePlan(
        decisions=decisions,
        run=run,
        blocked=blocked,
        skipped=builder.skipped,
        alerts=builder.alerts,
        holds=PoolHolds({k: frozenset(v) for k, v in builder.removed.items()},
                        {k: frozenset(v) for k, v in builder.added.items()}),
        notes=builder.notes,
        streaks=streaks,
        first=streaks - inputs.streaks,
    )


def key_views(
    names: Iterable[str],
    states: Mapping[str, KeyState],
    admin: Mapping[str, AdminInfo],
    *,
    signals: Mapping[str, frozenset[str]] | None = None,
    changed: Mapping[str, Health] | None = None,
    suspended: frozenset[str] = frozenset(),
    counted: Any = None,
) -> dict[str, KeyView]:
    """The views the plan decides on, for the daemon and `policy test` alike. `counted` (the outage
    tracker) discounts probes made during a provider outage from a key's streak."""
    views = {}
    signals, changed = signals or {}, changed or {}
    for n in names:
        st = states.get(n)
        if st is None:
            continue
        info = admin.get(n)
        views[n] = KeyView(
            st,
            signals.get(n, NO_SIGNALS),  # one empty set for every key without (an empty frozenset is 216 bytes)
            changed.get(n),
            counted.counted(n, st.consecutive) if counted is not None else None,
            counted.counted_since.get(n) if counted is not None else None,
            n in suspended,
            info.actor if info else None,
            info.changed_at if info else None,
        )
    return views


def ledger_from_events(events: Iterable[Any]) -> Ledger:
    """The per-policy counted actions of the audit trail (the daemon at start, `policy test` every time)."""
    ledger = Ledger()
    for e in sorted(events, key=lambda e: e.at):
        kind = e.data.get("action")
        if (
            e.kind == "action_done"
            and kind in actions.names()
            and actions.get(kind).counted
            and e.data.get("result") in ("ok", "partial", "failed")
            and not is_operator(e.actor)
        ):
            ledger.add(e.actor, e.at)
    return ledger


def plan_rows(plan: CyclePlan, outages: Iterable[tuple[str, str, str]] = ()) -> list[dict[str, str]]:
    """The plan as `keywatch policy test` prints it; `outages` are (provider, "new"|"ongoing", description)."""
    rows = [
        {"policy": "(outage)", "key": "-", "action": "suspend", "would": f"{state} outage of {provider}",
         "reason": words}
        for provider, state, words in outages
    ]
    for d in plan.decisions:
        rows.append({"policy": d.policy, "key": d.key, "action": d.kind, "would": plan.status(d), "reason": d.reason})
    return rows


def streaks_from_events(events: Iterable[Any], states: Mapping[str, KeyState]) -> frozenset[Tag]:
    """The daemon's `streaks` as the audit trail shows them, for `policy test`: a (policy, key, action)
    recorded since the key's health last changed is still in its streak (a hook that ran, a dry run
    recorded, a block announced), so the preview does not claim it happens again."""
    out = set()
    for e in events:
        kind = e.data.get("action")
        st = states.get(e.key) if e.key else None
        if kind is None or st is None or e.kind not in ("action_done", "action_blocked"):
            continue
        if st.health_since is None or e.at >= st.health_since:
            out.add((e.actor, e.key, kind))
    return frozenset(out)
