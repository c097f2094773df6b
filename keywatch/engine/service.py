"""The policy engine inside the daemon: one cycle hook detects outages, decides, acts, publishes pools.

Order within a cycle: re-read admin decisions from the database (a `keywatch disable` made while the
daemon runs takes effect here), detect outages, decide (pure), drop what is already done, apply the
blast-radius catches, act, raise/resolve alerts, publish pools. Any failure is logged and counted; the
daemon keeps probing.

Other parts fill `daemon.signals[key]` (a set of names, e.g. "budget_exhausted") for policies to read.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from keywatch.domain import AdminState, Alert, Event, KeyState, Severity
from keywatch.engine import outage as outage_mod
from keywatch.engine.executor import AdminInfo, Executor, read_admin
from keywatch.engine.outage import OutageTracker, detect
from keywatch.engine.policy import (
    COUNTED_ACTIONS,
    AlertBook,
    Blocked,
    Decision,
    KeyView,
    Ledger,
    alert_wishes,
    apply_limits,
    decide,
    effective_policies,
    is_operator,
    needed,
    pool_holds,
)
from keywatch.engine.policy_config import HookAction
from keywatch.pools import PoolManager
from keywatch.providers import registry

log = structlog.get_logger("keywatch.policy")
RETRY_FAILED_AFTER = timedelta(minutes=15)


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "keywatch_actions",
            "Policy actions, by result (ok, partial, failed, dry_run, blocked, fired, resolved)",
            ["policy", "action", "result"],
            registry=registry,
        )
        self.outage = Gauge(
            "keywatch_provider_outage", "1 while the provider is in outage", ["provider"], registry=registry
        )
        self.pool_size = Gauge(
            "keywatch_pool_size", "Keys currently published in the pool", ["pool"], registry=registry
        )
        self.pool_errors = Counter(
            "keywatch_pool_publish_errors",
            "Failed pool publications, by target",
            ["pool", "target"],
            registry=registry,
        )


def base_urls(keys: list[Any]) -> dict[str, str]:
    out = {}
    for k in keys:
        url = k.base_url
        if url is None:
            try:
                url = registry.info(k.provider).default_base_url
            except Exception:
                url = None
        out[k.name] = (url or k.options.get("endpoint") or k.provider).rstrip("/")
    return out


class PolicyEngine:
    def __init__(self, daemon: Any, metrics: PolicyMetrics) -> None:
        self.daemon = daemon
        self.metrics = metrics
        self.book = AlertBook()
        self.ledger = Ledger()
        self.outages = OutageTracker()
        self.pools = PoolManager(metrics)
        self.admin: dict[str, AdminInfo] = {}
        self.blast_firing = False
        self._announced: set[tuple[str, str, str]] = set()
        self._seen_now: set[tuple[str, str, str]] = set()
        self._retry_after: dict[tuple[str, str, str], datetime] = {}
        self.executor = Executor(
            self._adapter, daemon.store, self._record, emit_alert=daemon.emit_alert, on_state=self._on_state
        )
        self.last_decisions: list[Decision] = []

    # -- plumbing ----------------------------------------------------------------------------------------
    def _adapter(self, provider: str) -> Any:
        return self.daemon._adapters.get(provider)

    async def _record(self, event: Event) -> None:
        """Write through at once (an action's "started" line must exist if the process dies), else queue."""
        store = self.daemon.store
        try:
            await asyncio.to_thread(store.record_events, [event])
        except Exception:
            self.daemon.record(event)

    def _on_state(self, state: KeyState, actor: str, reason: str) -> None:
        cur = self.daemon.tracker.snapshot().get(state.key)
        if cur is not None:
            self.daemon.tracker.set(replace(cur, admin_state=state.admin_state))
        self.admin[state.key] = AdminInfo(state.admin_state, actor, reason, datetime.now(UTC))

    async def refresh_admin(self) -> None:
        try:
            rows = await asyncio.to_thread(read_admin, self.daemon.store)
        except Exception as exc:
            log.warning("admin_state_read_failed", error=type(exc).__name__)
            return
        await self.executor.flush_pending()
        snapshot = self.daemon.tracker.snapshot()
        for key, info in rows.items():
            if key in self.executor.pending_admin:
                continue
            self.admin[key] = info
            st = snapshot.get(key)
            if st is not None and st.admin_state is not info.state:
                log.info("admin_state_changed", key=key, state=str(info.state), actor=info.actor)
                self.daemon.tracker.set(replace(st, admin_state=info.state))

    async def load(self) -> None:
        try:
            self.outages.ongoing = await asyncio.to_thread(outage_mod.load_open, self.daemon.store)
        except Exception as exc:
            log.warning("outage_state_unavailable", error=type(exc).__name__)
        now = datetime.now(UTC)
        try:
            for e in await asyncio.to_thread(self.daemon.store.events, None, now - timedelta(hours=1), 10000):
                if (
                    e.kind == "action_done"
                    and e.data.get("action") in COUNTED_ACTIONS
                    and e.data.get("result") in ("ok", "partial", "failed")
                    and not is_operator(e.actor)
                ):
                    self.ledger.add(e.actor, e.at)
        except Exception as exc:
            log.warning("action_ledger_unavailable", error=type(exc).__name__)
        for q in self.ledger.times.values():
            q.__init__(sorted(q))  # type: ignore[misc]

    # -- the cycle ---------------------------------------------------------------------------------------
    async def on_cycle(self, daemon: Any, report: Any) -> None:
        inventory = report.inventory
        cfg = inventory.config
        now = datetime.now(UTC)
        self._seen_now = set()
        await self.refresh_admin()
        await self._outages(report, cfg, now)
        suspended = self.outages.suspended_keys()
        snapshot = daemon.tracker.snapshot()
        for r in report.results:
            st = snapshot.get(r.key)
            if st is not None:
                self.outages.count_probe(r.key, st.consecutive, r.key in suspended, now)
        signals: dict[str, set[str]] = getattr(daemon, "signals", {})
        changed = {t.key: t.old for t in report.transitions}
        views = {}
        for k in inventory.keys:
            st = snapshot.get(k.name)
            if st is None:
                continue
            info = self.admin.get(k.name)
            views[k.name] = KeyView(
                st,
                frozenset(signals.get(k.name, ())),
                changed.get(k.name),
                self.outages.counted(k.name, st.consecutive),
                self.outages.counted_since.get(k.name),
                k.name in suspended,
                info.actor if info else None,
                info.changed_at if info else None,
            )
        policies = effective_policies(list(cfg.policies), cfg.safety)
        decisions, _ = decide(policies, views, now, dry_run=cfg.safety.dry_run)
        self.last_decisions = decisions
        await self._alerts(decisions, views, inventory, now)
        await self._actions(decisions, views, inventory, policies, now)
        snapshot = daemon.tracker.snapshot()
        holds = pool_holds(decisions)
        await self._note_pool_actions(decisions)
        if cfg.pools:
            changes = await self.pools.publish_all(cfg.pools, inventory.keys, snapshot, signals, holds)
            for pool, (joined, left) in changes.items():
                parts = [f"+{n}" for n in joined] + [
                    f"-{n} ({snapshot[n].health}, {snapshot[n].admin_state})" if n in snapshot else f"-{n}"
                    for n in left
                ]
                await self._record(
                    Event(
                        now,
                        "pool_changed",
                        None,
                        "keywatch",
                        f"pool {pool}: {', '.join(parts)}",
                        {"pool": pool, "joined": joined, "left": left},
                    )
                )
        self._announced &= self._seen_now

    async def _outages(self, report: Any, cfg: Any, now: datetime) -> None:
        found = detect(report.results, base_urls(report.inventory.keys), cfg.outage)
        started, ended = self.outages.update(found, now)
        for f in started:
            log.warning("provider_outage", provider=f.provider, failed=f.failed, total=f.total, scope=f.scope)
            await self._record(
                Event(
                    now,
                    "outage_started",
                    None,
                    "keywatch",
                    f"{f.provider} outage: {f.describe()}; key actions suspended",
                    {"provider": f.provider, "failed": f.failed, "total": f.total},
                )
            )
            await self.daemon.emit_alert(
                Alert(
                    identity=f"provider_outage:{f.provider}",
                    severity=Severity.CRITICAL,
                    firing=True,
                    title=f"{f.provider} outage",
                    summary=f"{f.describe()}; key-level actions are suspended and these "
                    "failures do not count against the keys",
                    at=now,
                    provider=f.provider,
                    fields={"failed": str(f.failed), "total": str(f.total), "scope": f.scope},
                )
            )
        for f, since in ended:
            minutes = (now - since).total_seconds() / 60
            log.info("provider_recovered", provider=f.provider, minutes=round(minutes, 1))
            await self._record(
                Event(
                    now,
                    "outage_ended",
                    None,
                    "keywatch",
                    f"{f.provider} recovered after {minutes:.0f} min",
                    {"provider": f.provider},
                )
            )
            await self.daemon.emit_alert(
                Alert(
                    identity=f"provider_outage:{f.provider}",
                    severity=Severity.CRITICAL,
                    firing=False,
                    title=f"{f.provider} recovered",
                    summary=f"{f.provider} answers again after {minutes:.0f} min",
                    at=now,
                    provider=f.provider,
                )
            )
        for provider in {k.provider for k in report.inventory.keys} | set(self.outages.ongoing):
            self.metrics.outage.labels(provider).set(1 if provider in self.outages.ongoing else 0)
        if started or ended:
            try:
                await asyncio.to_thread(outage_mod.save_changes, self.daemon.store, started, ended, now)
            except Exception as exc:
                log.warning("outage_state_write_failed", error=type(exc).__name__)

    async def _alerts(
        self, decisions: list[Decision], views: dict[str, KeyView], inventory: Any, now: datetime
    ) -> None:
        live = [d for d in decisions if not d.dry_run]
        for d in decisions:
            if d.dry_run and d.kind == "alert" and self._first((d.policy, d.key, "alert")):
                await self._record(
                    Event(
                        now,
                        "action_done",
                        d.key,
                        d.policy,
                        f"dry run: would alert ({d.action.severity}): {d.reason}",  # type: ignore[union-attr]
                        {"action": "alert", "result": "dry_run", "reason": d.reason},
                    )
                )
                self.metrics.actions.labels(d.policy, "alert", "dry_run").inc()
        labels = {k.name: k for k in inventory.keys}
        for change in self.book.update(alert_wishes(live)):
            w = change.wish
            key = labels.get(w.key)
            v = views.get(w.key)
            fields = {"policy": w.policy, "reason": w.reason}
            if v is not None:
                fields.update(
                    health=str(v.state.health),
                    admin_state=str(v.state.admin_state),
                    masked=v.state.masked,
                    fingerprint=v.state.fingerprint,
                )
            await self.daemon.emit_alert(
                Alert(
                    identity=w.identity,
                    severity=w.severity,
                    firing=change.firing,
                    title=w.title if change.firing else f"{w.key}: resolved ({w.policy})",
                    summary=w.reason if change.firing else f"{w.policy} no longer matches {w.key}",
                    at=now,
                    key=w.key,
                    provider=w.provider,
                    labels=dict(key.labels) if key else {},
                    fields=fields,
                )
            )
            self.metrics.actions.labels(w.policy, "alert", "fired" if change.firing else "resolved").inc()

    def _first(self, tag: tuple[str, str, str]) -> bool:
        """True the first cycle a (policy, key, action) is seen in a row of matching cycles."""
        self._seen_now.add(tag)
        if tag in self._announced:
            return False
        self._announced.add(tag)
        return True

    async def _actions(
        self,
        decisions: list[Decision],
        views: dict[str, KeyView],
        inventory: Any,
        policies: list[Any],
        now: datetime,
    ) -> None:
        safety = inventory.config.safety
        wanted = []
        for d in decisions:
            if d.kind not in COUNTED_ACTIONS:
                continue
            tag = (d.policy, d.key, d.kind)
            if d.kind == "hook":
                if not self._first(tag):
                    continue
            elif not needed(d, views[d.key]):
                continue
            if self._retry_after.get(tag, now) > now:
                self._seen_now.add(tag)
                continue
            wanted.append(d)
        limits = {p.name: p.max_actions_per_hour or safety.max_actions_per_policy_per_hour for p in policies}
        disabled = sum(
            1
            for v in views.values()
            if v.state.admin_state is AdminState.DISABLED and not is_operator(v.admin_actor)
        )
        allowed, blocked = apply_limits(
            wanted,
            ledger=self.ledger,
            now=now,
            policy_limits=limits,
            fleet_size=len(inventory.keys),
            disabled_by_keywatch=disabled,
            max_disabled_percent=safety.max_disabled_percent,
        )
        keys = {k.name: k for k in inventory.keys}
        for d in allowed:
            tag = (d.policy, d.key, d.kind)
            if d.dry_run:
                if d.kind == "hook" or self._first(tag):
                    await self._execute(d, keys[d.key], views[d.key].state)
                continue
            out = await self._execute(d, keys[d.key], views[d.key].state)
            self.ledger.add(d.policy, now)
            if out.result == "failed":
                self._retry_after[tag] = now + RETRY_FAILED_AFTER
            else:
                self._retry_after.pop(tag, None)
        await self._blast(blocked, now)

    async def _execute(self, d: Decision, key: Any, state: KeyState) -> Any:
        ex = self.executor
        try:
            if d.kind in ("disable", "enable"):
                out = await getattr(ex, d.kind)(
                    key,
                    state,
                    d.policy,
                    d.reason,
                    at_provider=d.action.at_provider,  # type: ignore[union-attr]
                    dry_run=d.dry_run,
                )
            elif d.kind == "revoke":
                out = await ex.revoke(key, state, d.policy, d.reason, dry_run=d.dry_run)
            else:
                assert isinstance(d.action, HookAction)
                out = await ex.hook(
                    key, state, d.policy, d.reason, d.action.command, d.action.timeout, dry_run=d.dry_run
                )
        except Exception as exc:
            log.exception("action_crashed", policy=d.policy, key=d.key, action=d.kind)
            from keywatch.engine.executor import Outcome

            out = Outcome("failed", type(exc).__name__)
        self.metrics.actions.labels(d.policy, d.kind, out.result).inc()
        log.info("action", policy=d.policy, key=d.key, action=d.kind, result=out.result, detail=out.message)
        return out

    async def _blast(self, blocked: list[Blocked], now: datetime) -> None:
        for b in blocked:
            d = b.decision
            self.metrics.actions.labels(d.policy, d.kind, "blocked").inc()
            if self._first((d.policy, d.key, d.kind)):
                await self._record(
                    Event(
                        now,
                        "action_blocked",
                        d.key,
                        d.policy,
                        f"{d.kind} {d.key} NOT done: {b.why}; wanted because: {d.reason}",
                        {"action": d.kind, "result": "blocked", "reason": d.reason},
                    )
                )
        if blocked and not self.blast_firing:
            self.blast_firing = True
            why = sorted({b.why for b in blocked})
            log.error("blast_radius", blocked=len(blocked), why=why)
            await self._record(
                Event(
                    now,
                    "blast_radius",
                    None,
                    "keywatch",
                    f"keywatch stopped acting: {len(blocked)} actions held back; " + "; ".join(why),
                )
            )
            await self.daemon.emit_alert(
                Alert(
                    identity="blast_radius",
                    severity=Severity.CRITICAL,
                    firing=True,
                    title="keywatch stopped acting: blast-radius limit",
                    summary=f"{len(blocked)} actions held back ({', '.join(sorted({b.decision.key for b in blocked})[:10])}"  # noqa: E501
                    f"): {'; '.join(why)}. Check the adapters and the provider before raising the limit.",
                    at=now,
                    fields={"blocked": str(len(blocked))},
                )
            )
        elif not blocked and self.blast_firing:
            self.blast_firing = False
            await self.daemon.emit_alert(
                Alert(
                    identity="blast_radius",
                    severity=Severity.CRITICAL,
                    firing=False,
                    title="keywatch acts again",
                    summary="no action is held back by the blast-radius limit",
                    at=now,
                )
            )

    async def _note_pool_actions(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.kind not in ("pool_remove", "pool_add") or not self._first((d.policy, d.key, d.kind)):
                continue
            pools = ", ".join(getattr(d.action, "pools", None) or ["every pool"])
            verb = "out of" if d.kind == "pool_remove" else "into"
            result = "dry_run" if d.dry_run else "ok"
            await self._record(
                Event(
                    datetime.now(UTC),
                    "action_done",
                    d.key,
                    d.policy,
                    f"{'dry run: would hold' if d.dry_run else 'held'} {d.key} {verb} {pools} "
                    f"while: {d.reason}",
                    {"action": d.kind, "result": result, "reason": d.reason},
                )
            )
            self.metrics.actions.labels(d.policy, d.kind, result).inc()


# -- daemon extension ---------------------------------------------------------------------------------------
async def setup(daemon: Any) -> None:
    if not hasattr(daemon, "signals"):
        daemon.signals = {}
    metrics = PolicyMetrics(daemon.metrics.registry)
    engine = PolicyEngine(daemon, metrics)
    await engine.load()
    daemon.policy_engine = engine
    daemon.cycle_hooks.append(engine.on_cycle)
    cfg = daemon.inventory.config
    policies = effective_policies(list(cfg.policies), cfg.safety)
    # With no policy at all (default_policies = "never" and none written) the alert pipeline's plain
    # health-change alerts stay on, so a key dying is never silent.
    daemon.policy_owns_key_alerts = bool(policies)
    log.info(
        "policies_ready",
        policies=[p.name for p in policies],
        pools=[p.name for p in cfg.pools],
        dry_run=cfg.safety.dry_run,
    )


async def teardown(daemon: Any) -> None:
    engine: PolicyEngine | None = getattr(daemon, "policy_engine", None)
    if engine is not None:
        await engine.pools.aclose()
