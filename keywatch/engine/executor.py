"""Doing what a decision asks. Used by the daemon and by the CLI.

The executor owns what every action shares (the audit frame, provider calls, admin-state writes, failure
alerts); each action's own steps live in its module under engine/actions/, found through the registry.

Every action is recorded before and after (an Event each, with actor, reason and result), so the audit
trail shows an action that was started even if the process died half-way. A provider call that fails
never counts as done at the provider: it is recorded and alerted, and keywatch's own admin state says
only what keywatch itself did (the key leaves the pools).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from keywatch.domain import Alert, Event, KeyState, ManagedKey, Severity
from keywatch.engine.model import ActionRequest, KeyView, Outcome
from keywatch.providers.base import Capability, NotSupported, ProviderActionError, ProviderAdapter
from keywatch.redact import REGISTRY, redact_text
from keywatch.runtime import SOLO, NotLeader, fence, leadership_of

if TYPE_CHECKING:
    from keywatch.store.repo import Store

log = structlog.get_logger("keywatch.executor")

AdapterLookup = Callable[[str], ProviderAdapter]
Recorder = Callable[[Event], Awaitable[None]]
AlertFn = Callable[[Alert], Awaitable[None]]


# -- the executor ---------------------------------------------------------------------------------------
class Executor:
    def __init__(
        self,
        adapters: AdapterLookup,
        store: Store | None,
        record: Recorder,
        *,
        emit_alert: AlertFn | None = None,
        on_state: Callable[[KeyState, str, str], None] | None = None,
        current: Callable[[str], KeyState | None] | None = None,
        locks: dict[str, asyncio.Lock] | None = None,
    ) -> None:
        self.adapters = adapters
        self.store = store
        self.record = record
        self.emit_alert = emit_alert
        self.on_state = on_state
        # The live state of a key and the per-key locks, shared by every executor of the process (the policy
        # engine's and containment's): actions on one key run one at a time, and an action planned on a
        # state that changed meanwhile (a containment disabled the key while the cycle was planning) is
        # asked again whether it is needed, on the live state.
        self.current = current
        self.locks: dict[str, asyncio.Lock] = locks if locks is not None else {}
        # Admin decisions made while the database was down: written again every cycle until stored.
        self.pending_admin: dict[str, tuple[KeyState, str, str, datetime]] = {}
        # time.monotonic() when each key's last provider call succeeded: a containment's time ends there,
        # not after the writes that follow it (one float per key ever acted on).
        self.provider_done: dict[str, float] = {}

    async def _event(self, kind: str, key: str | None, actor: str, message: str, **data: Any) -> None:
        await self.record(Event(datetime.now(UTC), kind, key, actor, REGISTRY.redact(message), data))

    @property
    def fenced(self) -> bool:
        """Several instances share the database: an action starts only in a transaction that proves this
        instance still leads (keywatch.runtime.fence)."""
        return self.store is not None and leadership_of(self.store.engine) is not SOLO

    async def _start_fenced(self, started: Event) -> str | None:
        """Write the action's start in the transaction that checks the fencing token. None: go on;
        otherwise why not (this instance was deposed, or the database cannot confirm it leads)."""
        store = self.store
        assert store is not None

        lead = leadership_of(store.engine)
        # The audit line names the instance and its term, so the trail shows one actor per action.
        started = replace(started, data={**started.data, "instance": lead.instance, "token": lead.token})

        def write() -> None:
            with store.session.begin() as s:
                fence(s)
                store._add_events(s, [started])

        try:
            await asyncio.to_thread(write)
        except NotLeader as exc:
            return str(exc)
        except Exception as exc:
            return f"leadership not confirmed ({type(exc).__name__})"
        return None

    async def set_admin(self, state: KeyState, actor: str, reason: str) -> None:
        at = datetime.now(UTC)
        if self.on_state is not None:
            self.on_state(state, actor, reason)
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.write_admin, state, actor, reason, at)
            self.pending_admin.pop(state.key, None)
        except Exception as exc:
            self.pending_admin[state.key] = (state, actor, reason, at)
            log.error("admin_state_write_failed", key=state.key, error=type(exc).__name__)

    async def flush_pending(self) -> None:
        for key, (state, actor, reason, at) in list(self.pending_admin.items()):
            assert self.store is not None
            try:
                await asyncio.to_thread(self.store.write_admin, state, actor, reason, at)
            except Exception:
                return
            self.pending_admin.pop(key, None)

    async def alert_failure(self, key: ManagedKey, action: str, actor: str, message: str) -> None:
        if self.emit_alert is None:
            return
        await self.emit_alert(
            Alert(
                identity=f"action_failed:{key.name}",
                severity=Severity.CRITICAL,
                firing=True,
                title=f"{key.name}: {action} failed at {key.provider}",
                summary=message,
                at=datetime.now(UTC),
                key=key.name,
                provider=key.provider,
                labels=dict(key.labels),
                fields={
                    "action": action,
                    "actor": actor,
                    "masked": key.masked,
                    "fingerprint": key.fingerprint,
                },
            )
        )

    async def provider_call(
        self, key: ManagedKey, cap: Capability, call: str, *, at_provider: bool = True
    ) -> tuple[bool | None, str]:
        """(changed, words). changed: True done, False failed, None the provider cannot do it (or was not
        asked to: `at_provider=False`)."""
        if not at_provider:
            return None, "provider side not requested"
        try:
            adapter = self.adapters(key.provider)
        except Exception as exc:
            return False, f"no adapter for {key.provider}: {type(exc).__name__}"
        if cap not in adapter.capabilities:
            return None, f"{key.provider} cannot {call} a key through its API"
        try:
            await getattr(adapter, call)(key)
        except NotSupported as exc:
            return None, redact_text(str(exc))
        except ProviderActionError as exc:
            return False, REGISTRY.redact(str(exc))
        except Exception as exc:
            return False, REGISTRY.redact(f"{type(exc).__name__}: {exc}")[:300]
        self.provider_done[key.name] = time.monotonic()
        return True, f"{call}d at {key.provider}"

    async def run(self, req: ActionRequest) -> Outcome:
        """Run one action through its registered module, one at a time per key. An action no longer needed
        on the key's live state is not run: Outcome `already` (another path did it meanwhile)."""
        from keywatch.engine import actions

        action = actions.get(req.config.type)
        lock = self.locks.setdefault(req.key.name, asyncio.Lock())
        async with lock:
            live = self.current(req.key.name) if self.current is not None else None
            if live is not None and live.admin_state is not req.state.admin_state:
                if not action.needed(req.config, KeyView(live)):
                    log.info("action_done_meanwhile", key=req.key.name, action=req.config.type,
                             admin_state=str(live.admin_state))
                    return Outcome("already", f"{req.key.name} is {live.admin_state} already", None, live)
                req = replace(req, state=live)
            return await action.execute(self, req)

    async def framed(
        self,
        action: str,
        subject: str,
        req: ActionRequest,
        *,
        body: Callable[[], Awaitable[Outcome]],
        would: str | None = None,
        provider_action: bool = True,
    ) -> Outcome:
        """The audit frame every action shares: an action_started event before anything happens (so a
        process dying half-way still leaves a trace), then the body unless this is a dry run, then an
        action_done event with the result. A provider action's done event carries `provider_changed` and
        repeats the reason; a hook's carries what the program did (its exit status) instead."""
        key, actor, reason, dry_run = req.key, req.actor, req.reason, req.dry_run
        started = Event(datetime.now(UTC), "action_started", key.name, actor,
                        REGISTRY.redact(f"{action} {subject}: {reason}"),
                        {"action": action, "reason": reason, "dry_run": dry_run})
        if not dry_run and self.fenced:
            refused = await self._start_fenced(started)
            if refused is not None:
                log.warning("action_refused", key=key.name, action=action, reason=refused)
                return Outcome("refused", f"not done: {refused}")
        else:
            await self.record(started)
        if dry_run:
            out = Outcome("dry_run", would or f"would {action} {subject} ({reason})")
        else:
            out = await body()
        if provider_action:
            message = f"{action} {subject}: {out.message}; reason: {reason}"
            fields: dict[str, Any] = {"provider_changed": out.provider_changed}
        else:
            message, fields = f"{action} {subject}: {out.message}", out.data
        await self._event(
            "action_done", key.name, actor, message, action=action, reason=reason, result=out.result, **fields
        )
        return out
