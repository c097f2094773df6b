"""Doing what a decision asks: disable, enable, revoke, run a hook. Used by the daemon and by the CLI.

Every action is recorded before and after (an Event each, with actor, reason and result), so the audit
trail shows an action that was started even if the process died half-way. A provider call that fails
never counts as done at the provider: it is recorded and alerted, and keywatch's own admin state says
only what keywatch itself did (the key leaves the pools).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select

from keywatch.domain import AdminState, Alert, Event, KeyState, Severity
from keywatch.providers.base import Capability, ManagedKey, NotSupported, ProviderActionError, ProviderAdapter
from keywatch.redact import REGISTRY, redact_text
from keywatch.store.models import KeyStateRow

log = structlog.get_logger("keywatch.executor")

AdapterLookup = Callable[[str], ProviderAdapter]
Recorder = Callable[[Event], Awaitable[None]]
AlertFn = Callable[[Alert], Awaitable[None]]


@dataclass(frozen=True)
class AdminInfo:
    state: AdminState
    actor: str | None
    reason: str | None
    changed_at: datetime | None


@dataclass
class Outcome:
    """What one action did. `result`: ok, partial (keywatch side done, provider side not), failed, dry_run."""

    result: str
    message: str
    provider_changed: bool | None = None  # None: not attempted
    state: KeyState | None = None
    data: dict[str, Any] = field(default_factory=dict)


# -- admin state in the database ------------------------------------------------------------------------
def read_admin(store: Any) -> dict[str, AdminInfo]:
    """Every key's admin decision as stored: the daemon re-reads it each cycle, so `keywatch disable`
    works while the daemon runs."""
    cols = (
        KeyStateRow.key,
        KeyStateRow.admin_state,
        KeyStateRow.admin_actor,
        KeyStateRow.admin_reason,
        KeyStateRow.admin_changed_at,
    )
    with store.session() as s:
        return {
            k: AdminInfo(AdminState(state), actor, reason, changed)
            for k, state, actor, reason, changed in s.execute(select(*cols))
        }


def write_admin(store: Any, state: KeyState, actor: str, reason: str, at: datetime) -> None:
    """Set the admin decision, creating the key's row first if the daemon never stored it."""
    store.save_cycle([state], [], [])
    store.set_admin_state(state.key, state.admin_state, actor, reason[:2000], at)


# -- the executor ---------------------------------------------------------------------------------------
class Executor:
    def __init__(
        self,
        adapters: AdapterLookup,
        store: Any | None,
        record: Recorder,
        *,
        emit_alert: AlertFn | None = None,
        on_state: Callable[[KeyState, str, str], None] | None = None,
    ) -> None:
        self.adapters = adapters
        self.store = store
        self.record = record
        self.emit_alert = emit_alert
        self.on_state = on_state
        # Admin decisions made while the database was down: written again every cycle until stored.
        self.pending_admin: dict[str, tuple[KeyState, str, str, datetime]] = {}

    async def _event(self, kind: str, key: str | None, actor: str, message: str, **data: Any) -> None:
        await self.record(Event(datetime.now(UTC), kind, key, actor, REGISTRY.redact(message), data))

    async def _set_admin(self, state: KeyState, actor: str, reason: str) -> None:
        at = datetime.now(UTC)
        if self.on_state is not None:
            self.on_state(state, actor, reason)
        if self.store is None:
            return
        try:
            await asyncio.to_thread(write_admin, self.store, state, actor, reason, at)
            self.pending_admin.pop(state.key, None)
        except Exception as exc:
            self.pending_admin[state.key] = (state, actor, reason, at)
            log.error("admin_state_write_failed", key=state.key, error=type(exc).__name__)

    async def flush_pending(self) -> None:
        for key, (state, actor, reason, at) in list(self.pending_admin.items()):
            try:
                await asyncio.to_thread(write_admin, self.store, state, actor, reason, at)
            except Exception:
                return
            self.pending_admin.pop(key, None)

    async def _alert_failure(self, key: ManagedKey, action: str, actor: str, message: str) -> None:
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

    async def _provider_call(
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
        return True, f"{call}d at {key.provider}"

    async def _framed(
        self,
        action: str,
        subject: str,
        key: ManagedKey,
        actor: str,
        reason: str,
        *,
        dry_run: bool,
        body: Callable[[], Awaitable[Outcome]],
        would: str | None = None,
        provider_action: bool = True,
    ) -> Outcome:
        """The audit frame every action shares: an action_started event before anything happens (so a
        process dying half-way still leaves a trace), then the body unless this is a dry run, then an
        action_done event with the result. A provider action's done event carries `provider_changed` and
        repeats the reason; a hook's carries what the program did (its exit status) instead."""
        await self._event(
            "action_started",
            key.name,
            actor,
            f"{action} {subject}: {reason}",
            action=action,
            reason=reason,
            dry_run=dry_run,
        )
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

    async def disable(
        self,
        key: ManagedKey,
        state: KeyState,
        actor: str,
        reason: str,
        *,
        at_provider: bool = True,
        dry_run: bool = False,
    ) -> Outcome:
        """Deactivate where reversible, and take the key out of keywatch's pools either way."""

        async def body() -> Outcome:
            changed, words = await self._provider_call(key, Capability.DISABLE, "disable", at_provider=at_provider)
            new = replace(state, admin_state=AdminState.DISABLED)
            await self._set_admin(new, actor, reason)
            if changed is False:
                out = Outcome(
                    "partial",
                    f"disabled in keywatch (out of every pool); provider side NOT changed: {words}",
                    False,
                    new,
                )
                await self._alert_failure(key, "disable", actor, out.message)
                return out
            if changed is None:
                return Outcome(
                    "ok",
                    f"disabled in keywatch (out of every pool); provider side not changed: {words}",
                    None,
                    new,
                )
            return Outcome("ok", f"disabled in keywatch and {words}", True, new)

        return await self._framed("disable", key.name, key, actor, reason, dry_run=dry_run, body=body)

    async def enable(
        self,
        key: ManagedKey,
        state: KeyState,
        actor: str,
        reason: str,
        *,
        at_provider: bool = True,
        dry_run: bool = False,
    ) -> Outcome:
        """Re-activate at the provider first: a key still inactive there must not go back into pools."""

        async def body() -> Outcome:
            changed, words = await self._provider_call(key, Capability.ENABLE, "enable", at_provider=at_provider)
            if changed is False:
                out = Outcome("failed", f"stays disabled: re-activation at the provider failed: {words}", False)
                await self._alert_failure(key, "enable", actor, out.message)
                return out
            new = replace(state, admin_state=AdminState.ACTIVE)
            await self._set_admin(new, actor, reason)
            return Outcome("ok", "enabled in keywatch" + (f" and {words}" if changed else ""), changed, new)

        return await self._framed("enable", key.name, key, actor, reason, dry_run=dry_run, body=body)

    async def revoke(
        self, key: ManagedKey, state: KeyState, actor: str, reason: str, *, dry_run: bool = False
    ) -> Outcome:
        """Retire in keywatch only once the provider confirms: a key that may still work there must not be
        marked retired."""

        async def body() -> Outcome:
            changed, words = await self._provider_call(key, Capability.REVOKE, "revoke")
            if changed:
                new = replace(state, admin_state=AdminState.RETIRED)
                await self._set_admin(new, actor, reason)
                return Outcome("ok", f"{words}; retired in keywatch", True, new)
            out = Outcome("failed", f"not revoked: {words}", changed)
            await self._alert_failure(key, "revoke", actor, out.message)
            return out

        return await self._framed("revoke", key.name, key, actor, reason, dry_run=dry_run, body=body)

    async def hook(
        self,
        key: ManagedKey,
        state: KeyState,
        actor: str,
        reason: str,
        command: list[str],
        timeout: float,
        *,
        dry_run: bool = False,
    ) -> Outcome:
        """Run a program with what it needs to know and nothing more: not the daemon's environment, which may
        hold the secrets keywatch read from env: references."""
        shown = " ".join(command)

        async def body() -> Outcome:
            env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
            env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
            env.update(
                KEYWATCH_KEY=key.name,
                KEYWATCH_ACTION=actor,
                KEYWATCH_REASON=reason,
                KEYWATCH_POLICY=actor,
                KEYWATCH_PROVIDER=key.provider,
                KEYWATCH_HEALTH=str(state.health),
                KEYWATCH_FINGERPRINT=key.fingerprint,
            )
            return await _run(command, env, timeout)

        return await self._framed(
            "hook",
            shown,
            key,
            actor,
            reason,
            dry_run=dry_run,
            body=body,
            would=f"would run {shown}",
            provider_action=False,
        )


async def _run(command: list[str], env: dict[str, str], timeout: float) -> Outcome:
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return Outcome("failed", f"cannot start: {exc.strerror or type(exc).__name__}")
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return Outcome("failed", f"killed after {timeout:g}s")
    tail = REGISTRY.redact(output.decode(errors="replace")[-300:].strip())
    result = "ok" if proc.returncode == 0 else "failed"
    return Outcome(
        result, f"exit {proc.returncode}" + (f": {tail}" if tail else ""), data={"exit": proc.returncode}
    )
