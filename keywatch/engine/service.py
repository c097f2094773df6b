"""The policy engine inside the daemon: one cycle hook that detects outages, plans, and carries the plan out.

Order within a cycle: re-read admin decisions from the database (a `keywatch disable` made while the
daemon runs takes effect here), detect outages (the board says which providers are down), plan
(`plan.plan_cycle`, pure: the only place decisions are made), act, raise/resolve alerts naming what was
done, publish pools. Any failure is logged and counted; the daemon keeps probing.

Signals other capabilities raise about keys (budgets: `budget_exhausted`) come from the runtime's board.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from keywatch.domain import AdminInfo, AdminState, Alert, Event, KeyState, Severity
from keywatch.engine import actions, immediate
from keywatch.engine import outage as outage_mod
from keywatch.engine.executor import Executor
from keywatch.engine.model import ActionRequest, AlertWish, Decision, KeyView, Outcome
from keywatch.engine.outage import OutageTracker, detect
from keywatch.engine.plan import CycleInputs, CyclePlan, Tag, key_views, ledger_from_events, plan_cycle, tag_of
from keywatch.engine.policy import AlertBook, Ledger, effective_policies
from keywatch.pools import PoolManager
from keywatch.providers import registry
from keywatch.runtime import CycleReport, Runtime

log = structlog.get_logger("keywatch.policy")
RETRY_FAILED_AFTER = timedelta(minutes=15)
NO_DECISION = AdminInfo(AdminState.ACTIVE, None, None, None)  # what a key nothing was decided about reads as
MASS_ALERTS = 3  # this many keys of one policy firing in one cycle are grouped into one message


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
    def __init__(self, rt: Runtime, metrics: PolicyMetrics) -> None:
        self.rt = rt
        self.metrics = metrics
        self.book = AlertBook()
        self.ledger = Ledger()
        self.outages = OutageTracker()
        self.pools = PoolManager(metrics)
        self.admin: dict[str, AdminInfo] = {}
        self.blast_firing = False
        self.streaks: frozenset[Tag] = frozenset()
        self.retry_after: dict[Tag, datetime] = {}
        self.executor = Executor(rt.adapter, rt.store, rt.events.write, emit_alert=rt.emit_alert,
                                 on_state=self._on_state, current=rt.live_state, locks=rt.key_locks)
        self.last_plan: CyclePlan | None = None
        self.outcomes: dict[tuple[str, str], list[str]] = {}  # this cycle's actions, in title words
        self._publishing = asyncio.Lock()

    # -- plumbing ----------------------------------------------------------------------------------------
    def _on_state(self, state: KeyState, actor: str, reason: str) -> None:
        cur = self.rt.tracker.snapshot().get(state.key)
        if cur is not None:
            self.rt.tracker.set(replace(cur, admin_state=state.admin_state))
        self.admin[state.key] = AdminInfo(state.admin_state, actor, reason, datetime.now(UTC))

    async def refresh_admin(self) -> None:
        await self.executor.flush_pending()  # first, so the read sees what was waiting to be written
        try:
            rows = await asyncio.to_thread(self.rt.store.admin_decisions)
        except Exception as exc:
            log.warning("admin_state_read_failed", error=type(exc).__name__)
            return
        snapshot = self.rt.tracker.snapshot()
        for key in [k for k in self.admin if k not in rows]:  # its decision is no longer stored: none now
            rows[key] = NO_DECISION
        for key, info in rows.items():
            if key in self.executor.pending_admin:
                continue
            if info == NO_DECISION:
                self.admin.pop(key, None)  # reads as no decision (key_views); kept only for decided keys
            else:
                self.admin[key] = info
            st = snapshot.get(key)
            if st is not None and st.admin_state is not info.state:
                log.info("admin_state_changed", key=key, state=str(info.state), actor=info.actor)
                self.rt.tracker.set(replace(st, admin_state=info.state))

    async def load(self) -> None:
        store = self.rt.store
        try:
            self.outages.ongoing = outage_mod.from_stored(await asyncio.to_thread(store.open_outages))
        except Exception as exc:
            log.warning("outage_state_unavailable", error=type(exc).__name__)
        self.rt.board.set_outages({p: since for p, (since, _) in self.outages.ongoing.items()})
        # The alert pipeline remembers what is firing across restarts: take back the policy alerts, so one
        # whose key recovered while keywatch was down resolves instead of staying firing forever.
        for a in self.rt.alerts.firing():
            policy = a.fields.get("policy")
            if policy and a.key:
                self.book.firing[a.identity] = AlertWish(a.identity, a.severity, a.key, a.provider or "", policy,
                                                         a.title, a.fields.get("reason", a.summary))
        now = self.rt.clock()
        try:
            self.ledger = ledger_from_events(await asyncio.to_thread(store.events, None, now - timedelta(hours=1),
                                                                     10000))
        except Exception as exc:
            log.warning("action_ledger_unavailable", error=type(exc).__name__)

    async def aclose(self) -> None:
        immediate.attach(None)
        await self.pools.aclose()

    # -- the cycle ---------------------------------------------------------------------------------------
    async def on_cycle(self, report: CycleReport) -> None:
        inventory = report.inventory
        cfg = inventory.config
        now = self.rt.clock()
        await self.refresh_admin()
        snapshot = self.rt.tracker.snapshot()
        seen = report.seen(snapshot)
        await self._outages(report, seen, cfg, now)
        suspended = self.outages.suspended_keys()
        for st in seen:
            self.outages.count_probe(st.key, st.consecutive, st.key in suspended, now)
        views = key_views(
            (k.name for k in inventory.keys), snapshot, self.admin, signals=self.rt.board.as_map(),
            changed={t.key: t.old for t in report.transitions}, suspended=suspended, counted=self.outages,
        )
        plan = plan_cycle(CycleInputs(list(cfg.policies), cfg.safety, views, len(inventory.keys), now,
                                      self.ledger, self.streaks, self.retry_after))
        self.last_plan = plan
        keys = {k.name: k for k in inventory.keys}
        outcomes = await self._actions(plan, keys, views, now)
        await self._notes(plan, now)
        await self._blast(plan, now)
        await self._alerts(plan, views, keys, outcomes, now)
        self.streaks = plan.streaks
        if cfg.pools:
            await self._publish(cfg, inventory, plan, now)

    async def publish_now(self) -> None:
        """Publish the pools between cycles (a key just contained leaves them at once)."""
        inventory = self.rt.inventory
        if inventory.config.pools:
            await self._publish(inventory.config, inventory, self.last_plan, self.rt.clock())

    async def _publish(self, cfg: Any, inventory: Any, plan: CyclePlan | None, now: datetime) -> None:
        async with self._publishing:
            snapshot = self.rt.tracker.snapshot()
            signals = self.rt.board.as_map()
            changes = await self.pools.publish_all(cfg.pools, inventory.keys, snapshot, signals,
                                                   plan.holds if plan is not None else None)
        for pool, (joined, left) in changes.items():
            parts = [f"+{n}" for n in joined] + [
                f"-{n} ({snapshot[n].health}, {snapshot[n].admin_state})" if n in snapshot else f"-{n}"
                for n in left
            ]
            await self.rt.events.write(
                Event(now, "pool_changed", None, "keywatch", f"pool {pool}: {', '.join(parts)}",
                      {"pool": pool, "joined": joined, "left": left})
            )

    async def _outages(self, report: CycleReport, seen: list[KeyState], cfg: Any, now: datetime) -> None:
        found = detect(seen, base_urls(report.inventory.keys), cfg.outage)
        started, ended = self.outages.update(found, now)
        self.rt.board.set_outages({p: since for p, (since, _) in self.outages.ongoing.items()})
        for f in started:
            log.warning("provider_outage", provider=f.provider, failed=f.failed, total=f.total, scope=f.scope)
            await self.rt.events.write(
                Event(now, "outage_started", None, "keywatch",
                      f"{f.provider} outage: {f.describe()}; key actions suspended",
                      {"provider": f.provider, "failed": f.failed, "total": f.total})
            )
            await self.rt.emit_alert(
                Alert(
                    identity=f"provider_outage:{f.provider}", severity=Severity.CRITICAL, firing=True,
                    title=f"{f.provider} outage",
                    summary=f"{f.describe()}; key-level actions are suspended and these "
                    "failures do not count against the keys",
                    at=now, provider=f.provider,
                    fields={"failed": str(f.failed), "total": str(f.total), "scope": f.scope,
                            "action": "suspended key-level actions for this provider"},
                )
            )
        for f, since in ended:
            minutes = (now - since).total_seconds() / 60
            log.info("provider_recovered", provider=f.provider, minutes=round(minutes, 1))
            await self.rt.events.write(
                Event(now, "outage_ended", None, "keywatch", f"{f.provider} recovered after {minutes:.0f} min",
                      {"provider": f.provider})
            )
            await self.rt.emit_alert(
                Alert(
                    identity=f"provider_outage:{f.provider}", severity=Severity.CRITICAL, firing=False,
                    title=f"{f.provider} recovered", summary=f"{f.provider} answers again after {minutes:.0f} min",
                    at=now, provider=f.provider,
                )
            )
        for provider in {k.provider for k in report.inventory.keys} | set(self.outages.ongoing):
            self.metrics.outage.labels(provider).set(1 if provider in self.outages.ongoing else 0)
        if started or ended:
            try:
                await asyncio.to_thread(
                    self.rt.store.save_outages, [(f.provider, f.scope, f.failed, f.total) for f in started],
                    [f.provider for f, _ in ended], now,
                )
            except Exception as exc:
                log.warning("outage_state_write_failed", error=type(exc).__name__)

    async def _actions(
        self, plan: CyclePlan, keys: dict[str, Any], views: dict[str, KeyView], now: datetime
    ) -> dict[tuple[str, str], list[str]]:
        """Run the plan's actions; returns what was done, per (policy, key), in words for the alerts."""
        did: dict[tuple[str, str], list[str]] = {}
        self.outcomes = {}
        for d in plan.run:
            tag = tag_of(d)
            out = await self._execute(d, keys[d.key], views[d.key].state)
            did.setdefault((d.policy, d.key), []).append(self._words(d, out))
            self.outcomes.setdefault((d.policy, d.key), []).append(self._outcome(d, out))
            if d.dry_run or out.result == "already":  # done meanwhile by another path: not this policy's act
                continue
            self.ledger.add(d.policy, now)
            if out.result == "failed":
                self.retry_after[tag] = now + RETRY_FAILED_AFTER
            else:
                self.retry_after.pop(tag, None)
        for b in plan.blocked:
            limit = b.why.partition(":")[0].replace(" ", "-")
            did.setdefault((b.decision.policy, b.decision.key), []).append(
                f"{b.decision.kind} blocked by the {limit} limit ({b.why.partition(': ')[2]})")
            self.outcomes.setdefault((b.decision.policy, b.decision.key), []).append(
                f"{b.decision.kind} blocked by {limit} limit")
        for s in plan.skipped:
            if s.why == "already done":
                words = "already " + actions.get(s.decision.kind).describe(s.decision.action)
                did.setdefault((s.decision.policy, s.decision.key), []).append(words)
                self.outcomes.setdefault((s.decision.policy, s.decision.key), []).append(words)
        for d in plan.decisions:
            action = actions.get(d.kind)
            words = action.describe(d.action)
            if not action.counted and not d.dry_run and words:
                did.setdefault((d.policy, d.key), []).append(words)
                self.outcomes.setdefault((d.policy, d.key), []).append(words)
        return did

    @staticmethod
    def _outcome(d: Decision, out: Outcome) -> str:
        """What one action came to, in the few words of an alert title."""
        if out.result == "dry_run":
            return f"dry run: would {d.kind}"
        if out.result == "already":
            return out.message
        if out.result == "failed":
            return f"{d.kind} FAILED"
        if d.kind == "disable":
            if out.provider_changed:
                return "disabled at provider"
            if out.result == "partial":
                return "disabled in keywatch only (provider disable failed)"
            return "disabled in keywatch"
        if d.kind == "enable":
            return "re-enabled" + (" at provider" if out.provider_changed else " in keywatch")
        if d.kind == "revoke":
            return "revoked at provider"
        return f"{d.kind} {out.result}"

    @staticmethod
    def _words(d: Decision, out: Outcome) -> str:
        if out.result == "dry_run":
            return f"dry run: would {d.kind}"
        if out.result == "failed":
            return f"{d.kind} FAILED: {out.message}"
        return out.message

    async def _execute(self, d: Decision, key: Any, state: KeyState) -> Outcome:
        try:
            out = await self.executor.run(ActionRequest(key, state, d.policy, d.reason, d.action, d.dry_run))
        except Exception as exc:
            log.exception("action_crashed", policy=d.policy, key=d.key, action=d.kind)
            out = Outcome("failed", type(exc).__name__)
        self.metrics.actions.labels(d.policy, d.kind, out.result).inc()
        log.info("action", policy=d.policy, key=d.key, action=d.kind, result=out.result, detail=out.message)
        return out

    async def _notes(self, plan: CyclePlan, now: datetime) -> None:
        for n in plan.notes:
            d = n.decision
            await self.rt.events.write(
                Event(now, "action_done", d.key, d.policy, n.message,
                      {"action": d.kind, "result": n.result, "reason": d.reason})
            )
            self.metrics.actions.labels(d.policy, d.kind, n.result).inc()

    async def _alerts(
        self, plan: CyclePlan, views: dict[str, KeyView], keys: dict[str, Any],
        did: dict[tuple[str, str], list[str]], now: datetime,
    ) -> None:
        now_states = self.rt.tracker.snapshot()  # after this cycle's actions
        self.book.clear_after = self.rt.inventory.config.safety.alert_clear_probes
        changes = self.book.update(plan.alerts)
        # Many keys of one provider and policy firing together are one message per sink (the pipeline groups
        # by provider and `group` within alerts.group_wait), not a page per key beside the blast-radius alert.
        together = [(c.wish.policy, c.wish.provider, c.firing) for c in changes]
        mass = {t for t in together if together.count(t) >= MASS_ALERTS}
        outcomes = self.outcomes
        for change in changes:
            w = change.wish
            key = keys.get(w.key)
            v = views.get(w.key)
            st = now_states.get(w.key) or (v.state if v is not None else None)
            if change.firing:
                done = did.get((w.policy, w.key)) or ["alerted only: no action of this policy changed the key"]
                short = outcomes.get((w.policy, w.key)) or ["alert only"]
            else:  # what this cycle did to the key, whichever policy did it
                done = [x for (_, k), words in did.items() if k == w.key for x in words] or [
                    f"nothing: {w.policy} no longer matches the key"]
                short = ["resolved"]
            fields = {"policy": w.policy, "reason": w.reason, "action": "; ".join(done)}
            if (w.policy, w.provider, change.firing) in mass:
                fields["group"] = w.policy
            if st is not None:
                fields.update(health=str(st.health), admin_state=str(st.admin_state), masked=st.masked,
                              fingerprint=st.fingerprint)
            kind = ("budget_exhausted" if w.identity.startswith("budget:")
                    else "compromised" if st is not None and st.compromised else str(st.health) if st else "")
            if change.firing and kind:
                fields["kind"] = kind
            what = kind.replace("_", " ") if kind else w.policy
            default_title = w.title == f"{w.key}: {w.policy}"
            title = (f"{w.key} {what}: {'; '.join(short)}" if default_title else w.title) if change.firing else (
                f"{w.key} resolved: {w.policy} no longer matches ({st.health if st else 'unknown'} now)")
            await self.rt.emit_alert(
                Alert(
                    identity=w.identity, severity=w.severity, firing=change.firing,
                    title=title,
                    summary=w.reason if change.firing else f"{w.policy} no longer matches {w.key}",
                    at=now, key=w.key, provider=w.provider, labels=dict(key.labels) if key else {}, fields=fields,
                )
            )
            self.metrics.actions.labels(w.policy, "alert", "fired" if change.firing else "resolved").inc()

    async def _blast(self, plan: CyclePlan, now: datetime) -> None:
        blocked = plan.blocked
        for b in blocked:
            d = b.decision
            self.metrics.actions.labels(d.policy, d.kind, "blocked").inc()
            if tag_of(d) in plan.first:
                await self.rt.events.write(
                    Event(now, "action_blocked", d.key, d.policy,
                          f"{d.kind} {d.key} NOT done: {b.why}; wanted because: {d.reason}",
                          {"action": d.kind, "result": "blocked", "reason": d.reason})
                )
        if blocked and not self.blast_firing:
            self.blast_firing = True
            why = sorted({b.why for b in blocked})
            log.error("blast_radius", blocked=len(blocked), why=why)
            await self.rt.events.write(
                Event(now, "blast_radius", None, "keywatch",
                      f"keywatch stopped acting: {len(blocked)} actions held back; " + "; ".join(why))
            )
            names = ", ".join(sorted({b.decision.key for b in blocked})[:10])
            await self.rt.emit_alert(
                Alert(
                    identity="blast_radius", severity=Severity.CRITICAL, firing=True,
                    title="keywatch stopped acting: blast-radius limit",
                    summary=f"{len(blocked)} actions held back ({names}): {'; '.join(why)}. Check the adapters "
                    "and the provider before raising the limit.",
                    at=now, fields={"blocked": str(len(blocked)), "action": "held back the actions listed"},
                )
            )
        elif not blocked and self.blast_firing:
            self.blast_firing = False
            await self.rt.emit_alert(
                Alert(identity="blast_radius", severity=Severity.CRITICAL, firing=False, title="keywatch acts again",
                      summary="no action is held back by the blast-radius limit", at=now)
            )


# -- the capability ------------------------------------------------------------------------------------------
async def setup(rt: Runtime) -> PolicyEngine:
    engine = PolicyEngine(rt, PolicyMetrics(rt.registry))
    await engine.load()
    rt.on_cycle("policies", engine.on_cycle)
    immediate.attach(engine.publish_now)
    cfg = rt.inventory.config
    policies = effective_policies(list(cfg.policies), cfg.safety)
    log.info("policies_ready", policies=[p.name for p in policies], pools=[p.name for p in cfg.pools],
             dry_run=cfg.safety.dry_run)
    return engine
