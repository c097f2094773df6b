"""Containment: a key found exposed is taken out of service at once, not at the next cycle.

In this order: marked compromised (durably, and on the board: it leaves every pool and no policy re-enables
it), deactivated at the provider (Disable where the provider can; Revoke where it cannot and the account
allows destructive actions; keywatch's side only otherwise, with the alert saying a person must revoke it),
the pools published again, a rotation started where the key has one, and a critical alert naming the key,
the source and where it was found.

The dead-key blast radius does not apply (the engine exempts compromised keys); containment has its own
ceiling: none for exact matches, `leaks.pattern_limit_per_hour` for pattern-only signals, and every
containment held back raises a critical alert.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from keywatch.domain import AdminState, Alert, Event, KeyState, ManagedKey, Severity, Signal
from keywatch.engine import immediate
from keywatch.engine.actions import rotate as rotate_action
from keywatch.engine.actions.disable import DisableAction
from keywatch.engine.actions.revoke import RevokeAction
from keywatch.engine.executor import Executor
from keywatch.engine.model import ActionRequest, Outcome
from keywatch.leaks.batch import Batcher
from keywatch.leaks.store import Compromise, LeakReport, LeakStore, mark_contained_in, settle_in
from keywatch.providers.base import Capability
from keywatch.store.repo import Store

if TYPE_CHECKING:
    from keywatch.leaks.config import LeaksSettings
    from keywatch.leaks.metrics import LeakMetrics
    from keywatch.runtime import Runtime

log = structlog.get_logger("keywatch.leaks")
ACTOR = "leaks"
FAULT_ENV = "KEYWATCH_FAULT_CONTAINMENT"
_FREE = asyncio.Lock()


@dataclass(frozen=True)
class Exposure:
    """A managed key found exposed: by what, where, how sure, and when the report arrived."""

    key: str
    source: str
    location: str
    confidence: str  # exact | pattern | provider
    report: str | None = None
    received: float = 0.0  # time.monotonic() at arrival: containment_seconds counts from here
    validity: str | None = None
    publicly_leaked: bool | None = None
    since: datetime | None = None  # a retry: when the key was first marked
    fingerprints: tuple[str, ...] = ()  # a scan's report: the fingerprints of the secrets it found
    # The report as it is stored once handled (state `matched`), written with the mark in one transaction,
    # after `written` (the report's first write, under way beside the provider call) is done.
    row: LeakReport | None = None
    written: asyncio.Future[Any] | None = None


def fault_at(point: str) -> None:
    """The fault-injection point of the kill -9 tests: the process dies at `point` of a containment
    (`recorded`: the report written, nothing else; `marked`: the compromise mark written too)."""
    if os.environ.get(FAULT_ENV) == point:
        os._exit(137)


class Containment:
    def __init__(
        self, rt: Runtime, store: LeakStore, metrics: LeakMetrics, settings: Callable[[], LeaksSettings]
    ) -> None:
        self.rt = rt
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.writes = Batcher(store.run_batch)
        self.executor = Executor(rt.adapter, rt.store, self._record, emit_alert=rt.emit_alert, on_state=self._on_state,
                                 current=rt.live_state, locks=rt.key_locks)
        self.compromised: dict[str, Compromise] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pattern_times: deque[datetime] = deque()
        self._publishing = False
        self._publish_again = False

    # -- the board ------------------------------------------------------------------------------------
    async def load(self) -> None:
        """The marks as stored; one made here whose write failed stays (and is written again), so a
        database that was down at the mark never lets the key look clean."""
        try:
            stored = await asyncio.to_thread(self.store.compromised, include_cleared=True)
        except Exception as exc:
            log.warning("compromised_keys_unavailable", error=type(exc).__name__)
            self.publish_signal()
            return
        unwritten = [c for k, c in self.compromised.items() if c.active and k not in stored]
        for c in unwritten:
            try:
                stored[c.key] = await asyncio.to_thread(self.store.mark_compromised, c)
            except Exception as exc:
                log.warning("compromise_write_failed", key=c.key, error=type(exc).__name__)
                stored[c.key] = c
        self.compromised = {k: c for k, c in stored.items() if c.active}
        self.publish_signal()

    def publish_signal(self) -> None:
        """The board's `compromised` set, and the key states (so /metrics, the status page and `keywatch
        status` show it; a probe's result overwrites the flag, the next cycle's call sets it again)."""
        names = {k.name for k in self.rt.inventory.keys}
        active = {k: c for k, c in self.compromised.items() if c.active and k in names}
        self.rt.board.set(Signal.COMPROMISED, active, by="leaks")
        snapshot = self.rt.tracker.snapshot()
        for name, c in active.items():
            st = snapshot.get(name)
            if st is not None and not st.compromised:
                self.rt.tracker.set(
                    replace(st, compromised=True, compromise_reason=f"reported by {c.source} at {c.location}"[:300])
                )

    async def _record(self, event: Event) -> None:
        """The executor's audit lines. An action's start must be written before the provider call: it goes
        with the concurrent containments' starts, in one transaction ahead of everything else (leaks.batch),
        not behind the daemon's writer queue; the rest as every audit line goes."""
        if event.kind == "action_started":
            try:
                await self.writes.run(partial(Store._add_events, events=[event]), urgent=True)
                return
            except Exception as exc:
                log.warning("audit_write_failed", error=type(exc).__name__)
        await self.rt.events.write(event)

    def _on_state(self, state: KeyState, actor: str, reason: str) -> None:
        cur = self.rt.tracker.snapshot().get(state.key)
        if cur is not None:
            self.rt.tracker.set(_with_admin(cur, state.admin_state))

    # -- containment ----------------------------------------------------------------------------------
    async def contain(self, e: Exposure) -> Outcome | None:
        """Contain `e.key`; returns the provider-side outcome (None when held back or already contained)."""
        lock = self._locks.setdefault(e.key, asyncio.Lock())
        async with lock:
            return await self._contain(e)

    async def _contain(self, e: Exposure) -> Outcome | None:
        key = next((k for k in self.rt.inventory.keys if k.name == e.key), None)
        if key is None:
            await self._settle(e)
            return None
        now = self.rt.clock()
        current = self.compromised.get(e.key)
        if current is not None and current.active and current.contained_at is not None:
            await self._settle(e)
            await self.rt.events.write(
                Event(
                    now,
                    "leak_repeat",
                    key.name,
                    ACTOR,
                    f"{key.name} reported exposed again by {e.source} at {e.location}; already contained",
                    {"source": e.source, "report": e.report},
                )
            )
            return None
        if e.confidence == "pattern" and not self._pattern_allowed(now):
            await self._settle(e)
            await self._held_back(key, e, now)
            return None
        c = Compromise(key.name, key.fingerprint, e.since or now, e.source, e.location, e.report)
        self.compromised[key.name] = c
        self.publish_signal()
        # The mark is written beside the provider call, not before it: the call does not wait for the disk.
        if os.environ.get(FAULT_ENV) and e.written is not None:
            await asyncio.gather(e.written, return_exceptions=True)
            fault_at("recorded")
        marking = asyncio.ensure_future(self._mark(e, c))
        if os.environ.get(FAULT_ENV):
            await asyncio.gather(marking, return_exceptions=True)
            fault_at("marked")
        out = await self._deactivate(key, e)
        if out.provider_changed:  # a retry counts from the first report, not from itself
            # Up to the provider's answer: the admin-state write and events after it are not containment.
            after = time.monotonic() - self.executor.provider_done.pop(key.name, time.monotonic())
            took = (self.rt.clock() - e.since).total_seconds() if e.since else time.monotonic() - e.received
            self.metrics.containment.observe(max(0.0, took - after))
        try:
            self.compromised[key.name] = await marking
        except Exception as exc:  # the database is down: contained anyway; the report row says what happened
            log.error("compromise_write_failed", key=key.name, error=type(exc).__name__)
        # Contained when the provider side is done or cannot be done; a provider that failed (partial,
        # failed) is asked again at the next cycle (`retry_uncontained`).
        if out.result in ("ok", "already"):  # already: the policy engine's disable of it ran just before
            at = self.rt.clock()
            self.compromised[key.name] = _contained(c, at)
            try:
                await self.writes.run(partial(mark_contained_in, key=key.name, at=at))
            except Exception as exc:
                log.error("compromise_write_failed", key=key.name, error=type(exc).__name__)
        await self._publish_pools()
        rotation = await self._rotate(key, e)
        await self._alert(key, e, out, rotation, now)
        return out

    async def _mark(self, e: Exposure, c: Compromise) -> Compromise:
        if e.written is not None:
            await asyncio.gather(e.written, return_exceptions=True)  # one that failed: the settle writes it
        if e.row is None:
            return await asyncio.to_thread(self.store.mark_compromised, c)
        return await self.writes.run(partial(settle_in, r=e.row, mark=c)) or c

    async def _settle(self, e: Exposure) -> None:
        """The report handled without a mark (a repeat, held back, a key no longer configured)."""
        if e.row is None:
            return
        if e.written is not None:
            await asyncio.gather(e.written, return_exceptions=True)
        try:
            await self.writes.run(partial(settle_in, r=e.row, mark=None))
        except Exception as exc:
            log.warning("leak_report_write_failed", error=type(exc).__name__)

    async def _publish_pools(self) -> None:
        """Publish the pools now; containments arriving while a publication runs share the next one (the
        board already excludes their keys), so a burst of reports is a few publications, not one each."""
        if self._publishing:
            self._publish_again = True
            return
        self._publishing = True
        try:
            while True:
                self._publish_again = False
                try:
                    await immediate.publish_pools()
                except Exception:
                    log.exception("pool_publish_failed")
                if not self._publish_again:
                    return
        finally:
            self._publishing = False

    async def retry_uncontained(self) -> list[str]:
        """Contain again every key marked compromised whose provider side is not done (the provider failed,
        or the process died between the mark and the call)."""
        names = {k.name for k in self.rt.inventory.keys}
        todo = [
            c
            for k, c in self.compromised.items()
            if c.active and c.contained_at is None and k in names and not self._locks.get(k, _FREE).locked()
        ]
        for c in todo:
            await self.contain(
                Exposure(c.key, c.source, c.location, "exact", c.report, time.monotonic(), since=c.since)
            )
        return [c.key for c in todo]

    def _pattern_allowed(self, now: datetime) -> bool:
        while self._pattern_times and now - self._pattern_times[0] >= timedelta(hours=1):
            self._pattern_times.popleft()
        if len(self._pattern_times) >= self.settings().pattern_limit_per_hour:
            return False
        self._pattern_times.append(now)
        return True

    def _plan(self, key: ManagedKey) -> tuple[Any, str]:
        try:
            caps = self.rt.adapter(key.provider).capabilities
        except Exception:
            caps = frozenset()
        if Capability.DISABLE in caps:
            return DisableAction(at_provider=True), "disable"
        account = self.rt.inventory.accounts.get(key.account) if key.account else None
        if (
            Capability.REVOKE in caps
            and self.settings().revoke_without_disable
            and account is not None
            and account.allow_destructive
        ):
            return RevokeAction(allow_destructive=True), "revoke"
        return DisableAction(at_provider=False), "disable"

    async def _deactivate(self, key: ManagedKey, e: Exposure) -> Outcome:
        config, _ = self._plan(key)
        state = self.rt.tracker.snapshot().get(key.name) or KeyState(
            key.name, key.provider, key.fingerprint, key.masked, labels=dict(key.labels)
        )
        reason = f"exposed: reported by {e.source} at {e.location}"
        try:
            return await self.executor.run(ActionRequest(key, state, ACTOR, reason, config))
        except Exception as exc:
            log.exception("containment_crashed", key=key.name)
            return Outcome("failed", type(exc).__name__, False)

    async def _rotate(self, key: ManagedKey, e: Exposure) -> str | None:
        starter = rotate_action.starter()
        if not self.settings().rotate or starter is None or not key.options.get("publish"):
            return None
        try:
            started = await starter(key.name, actor=ACTOR, reason=f"exposed: reported by {e.source}")
        except Exception as exc:
            return f"rotation not started: {type(exc).__name__}"
        return started.message if started.ok else f"rotation not started: {started.message}"

    async def _held_back(self, key: ManagedKey, e: Exposure, now: datetime) -> None:
        limit = self.settings().pattern_limit_per_hour
        why = f"containment ceiling: {limit} pattern-only containments in the last hour (leaks.pattern_limit_per_hour)"
        self.metrics.held_back.labels(e.source).inc()
        await self.rt.events.write(
            Event(
                now,
                "containment_blocked",
                key.name,
                ACTOR,
                f"{key.name} NOT contained: {why}; reported by {e.source} at {e.location}",
                {"source": e.source, "report": e.report},
            )
        )
        await self.rt.emit_alert(
            Alert(
                identity=f"containment_blocked:{key.name}",
                severity=Severity.CRITICAL,
                firing=True,
                title=f"{key.name} possibly exposed: containment held back",
                summary=f"{e.source} reported a match of the key's format at {e.location}; {why}. Check the report "
                f"and run `keywatch disable {key.name}` if it is the key",
                at=now,
                key=key.name,
                provider=key.provider,
                labels=dict(key.labels),
                fields={
                    "kind": "containment_blocked",
                    "source": e.source,
                    "location": e.location,
                    "masked": key.masked,
                    "fingerprint": key.fingerprint,
                    "action": "held back by the containment ceiling",
                },
            )
        )

    async def _alert(self, key: ManagedKey, e: Exposure, out: Outcome, rotation: str | None, now: datetime) -> None:
        done = _short(out)
        action = out.message + (f"; {rotation}" if rotation else "")
        fields = {
            "kind": "compromised",
            "source": e.source,
            "location": e.location,
            "masked": key.masked,
            "fingerprint": key.fingerprint,
            "confidence": e.confidence,
            "action": action,
            "admin_state": str(AdminState.RETIRED if "revoke" in done else AdminState.DISABLED),
        }
        if e.validity:
            fields["validity"] = e.validity
        if e.publicly_leaked is not None:
            fields["publicly_leaked"] = str(e.publicly_leaked).lower()
        if e.fingerprints:  # what a restarted scan reads back not to report the same secrets again
            fields["fingerprints"] = ",".join(e.fingerprints)
        await self.rt.emit_alert(
            Alert(
                identity=f"compromised:{key.name}",
                severity=Severity.CRITICAL,
                firing=True,
                title=f"{key.name} compromised: {done}",
                summary=f"found by {e.source} at {e.location}; {action}",
                at=now,
                key=key.name,
                provider=key.provider,
                labels=dict(key.labels),
                fields=fields,
            )
        )
        log.warning(
            "key_contained", key=key.name, source=e.source, result=out.result, provider_changed=out.provider_changed
        )


def _short(out: Outcome) -> str:
    if out.result == "already":
        return "already out of service (disabled by a policy just before), out of every pool"
    if out.result == "failed":
        return "containment FAILED at the provider (out of every pool)"
    if out.provider_changed and "revoked" in out.message:
        return "revoked at the provider, out of every pool"
    if out.provider_changed:
        return "deactivated at the provider, out of every pool"
    if out.result == "partial":
        return "out of every pool; provider deactivation FAILED"
    return "out of every pool; the provider cannot deactivate it: revoke it in its console"


def _with_admin(st: KeyState, admin: AdminState) -> KeyState:
    return replace(st, admin_state=admin)


def _contained(c: Compromise, at: datetime) -> Compromise:
    return replace(c, contained_at=c.contained_at or at)
