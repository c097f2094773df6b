"""The rotation state machine: persisted, idempotent steps modelled on AWS Secrets Manager's rotation.

    create -> publish_pending -> verify -> promote -> grace -> retire_old -> done

Each step is recorded in the `rotations` row before the next begins; a provider call is recorded as an
intent before it is made and its result right after, so a process killed at any moment finds, at restart,
what it had asked for. Failure before `promote` rolls back (the new credential revoked, the pending values
discarded, the old credential untouched); after `promote` the rotation only moves forward. The new secret is
never stored in the row: it lives in memory and in the destinations' pending stage, so after a crash before
`publish_pending` the new credential is found by its name (`<key>-rot-<id prefix>`) and revoked.
"""

from __future__ import annotations

import asyncio
import os
import secrets as _secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from keywatch.domain import Health, ManagedKey
from keywatch.providers.base import NewCredential, NotSupported, ProviderAdapter
from keywatch.redact import REGISTRY
from keywatch.rotation.store import Rotation, updated

log = structlog.get_logger("keywatch.rotation")

STEPS = ("create", "publish_pending", "verify", "promote", "grace", "retire_old", "done")
BEFORE_PROMOTE = ("started", "create", "publish_pending", "verify")
FAULT_ENV = "KEYWATCH_FAULT_AFTER_STEP"


def fault_after(step: str) -> None:
    """The fault-injection point of the kill -9 tests: the process dies right after recording `step`."""
    if os.environ.get(FAULT_ENV) == step:
        os._exit(137)


def new_rotation(key: ManagedKey, mode: str, *, actor: str, reason: str, at: datetime) -> Rotation:
    rid = _secrets.token_hex(8)
    return Rotation(id=rid, key=key.name, provider=key.provider, mode=mode, step="started", state="running",
                    new_name=f"{key.name}-rot-{rid[:8]}", token=_secrets.token_hex(16), actor=actor, reason=reason,
                    started_at=at, updated_at=at)


@dataclass
class Policy:
    """How one key rotates (rotation/config.py builds it from the key's fields and the [rotation] section)."""

    grace: timedelta = timedelta(hours=1)
    revoke_when: str = "grace"  # grace | unused
    max_unused_wait: timedelta = timedelta(days=1)
    verify_timeout: timedelta = timedelta(minutes=5)
    verify_interval: float = 2.0
    allow_destructive: bool = False


class Failed(Exception):
    """A step could not be done; the message names the step and never holds a secret."""


@dataclass
class Machine:
    adapter: ProviderAdapter  # or anything that answers as one (the service: the current inventory's)
    destinations: Sequence[Any]  # keywatch.secretstores Destination
    save: Callable[[Rotation], Awaitable[None]]
    clock: Callable[[], datetime]
    policy: Policy = field(default_factory=Policy)
    on_promote: Callable[[Rotation, ManagedKey], Awaitable[list[str] | None]] | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    new: NewCredential | None = None  # in memory only; assisted mode: the value a person made
    # before each step (its provider or store call): raises runtime.NotLeader when this instance no longer
    # leads; the step's record is fenced too (RotationStore.save), so a deposed leader stops at once
    guard: Callable[[], Awaitable[None]] | None = None

    async def _record(self, r: Rotation, **changes: Any) -> Rotation:
        r = updated(r, self.clock(), **changes)
        await self.save(r)
        log.info("rotation_step", rotation=r.id, key=r.key, step=r.step, state=r.state, intent=r.intent)
        return r

    async def run(self, r: Rotation, key: ManagedKey) -> Rotation:
        """Drive `r` as far as it can go now: to done, rolled back, or waiting in grace (returned with
        state running and step promote/grace; call again later)."""
        if r.state == "rolling_back":
            return await self.rollback(r, key, r.error or "rollback resumed")
        if r.state == "running" and r.step == "started" and r.intent == "create" and self.new is None:
            # killed during the create call: its answer (the secret) is lost; revoke what it made
            return await self.rollback(r, key, "the process stopped during create; the new credential is revoked")
        while r.state == "running":
            try:
                nxt = await self._advance(r, key)
            except Failed as exc:
                message = REGISTRY.redact(str(exc))[:500]
                if r.step in BEFORE_PROMOTE:
                    return await self.rollback(r, key, message)
                # after promote: roll forward; record the problem and try again later
                return await self._record(r, error=message)
            if nxt is None:
                return r
            r = nxt
        return r

    async def _advance(self, r: Rotation, key: ManagedKey) -> Rotation | None:
        if self.guard is not None:
            await self.guard()
        step = r.step
        if step == "started":
            return await self._create(r, key)
        if step == "create":
            return await self._publish(r, key)
        if step == "publish_pending":
            return await self._verify(r, key)
        if step == "verify":
            return await self._promote(r, key)
        if step == "promote":
            r = await self._record(r, step="grace", error=None)
            fault_after("grace")
            return r
        if step == "grace":
            if not await self._grace_over(r, key):
                return None
            return await self._retire(r, key)
        if step == "retire_old":
            r = await self._record(r, step="done", state="done", finished_at=self.clock(), error=None)
            fault_after("done")
            return r
        raise Failed(f"unknown step {step!r}")

    # -- steps --------------------------------------------------------------------------------------
    async def _create(self, r: Rotation, key: ManagedKey) -> Rotation:
        old_id = r.old_credential
        if old_id is None:
            try:
                old_id = (await self.adapter.current_credential(key)).id
            except NotSupported:
                old_id = key.options.get("provider_key_id")
            except Exception as exc:
                raise Failed(f"create: reading the current credential failed: {type(exc).__name__}: {exc}") from None
        if r.mode == "assisted":
            if self.new is None:
                raise Failed("create: assisted rotation has no new value (a person creates the key; "
                             "give it with --new-secret REF or put it in the key's secret source)")
            new_id = self.new.id
        else:
            r = await self._record(r, intent="create", old_credential=old_id)
            try:
                self.new = await self.adapter.create_credential(key, name=r.new_name)
            except Exception as exc:
                raise Failed(f"create at {key.provider} failed: {type(exc).__name__}: {exc}") from None
            new_id = self.new.id
        r = await self._record(r, step="create", intent=None, old_credential=old_id, new_credential=new_id)
        fault_after("create")
        return r

    async def _secret(self, r: Rotation, key: ManagedKey) -> NewCredential:
        if self.new is not None:
            return self.new
        for d in self.destinations:  # after a restart: the pending stage holds it
            try:
                value = await d.read("pending")
            except Exception as exc:
                log.warning("rotation_pending_read_failed", rotation=r.id, destination=d.ref, error=type(exc).__name__)
                continue
            if value is not None:
                self.new = NewCredential(r.new_credential or "", value, {})
                return self.new
        raise Failed(f"{r.step}: the new secret is gone (the process restarted before it was published)")

    async def _publish(self, r: Rotation, key: ManagedKey) -> Rotation:
        new = await self._secret(r, key)
        if not self.destinations:
            raise Failed("publish_pending: the key has no `publish` destinations")
        for d in self.destinations:
            try:
                await d.write_pending(new.secret, token=r.token, fields=new.fields)
            except Exception as exc:
                raise Failed(f"publish_pending to {d.ref} failed: {type(exc).__name__}: {exc}") from None
        r = await self._record(r, step="publish_pending")
        fault_after("publish_pending")
        return r

    async def _verify(self, r: Rotation, key: ManagedKey) -> Rotation:
        new = await self._secret(r, key)
        candidate = self.adapter.with_credential(key, new)
        deadline = self.clock() + self.policy.verify_timeout
        last = "not probed"
        while True:
            try:
                result = await self.adapter.probe(candidate)
                if result.health is Health.HEALTHY:
                    break
                last = f"{result.health}" + (f" ({result.error_code})" if result.error_code else "")
            except Exception as exc:
                last = f"{type(exc).__name__}"
            if self.clock() >= deadline:
                raise Failed(f"verify: the new credential never became healthy within "
                             f"{self.policy.verify_timeout} (last: {last})")
            await self.sleep(self.policy.verify_interval)
        r = await self._record(r, step="verify")
        fault_after("verify")
        return r

    async def _promote(self, r: Rotation, key: ManagedKey) -> Rotation:
        new = await self._secret(r, key)
        # Each destination's promote is idempotent (token): a repeat after a crash is a no-op.
        for i, d in enumerate(self.destinations):
            try:
                await d.promote(token=r.token)
            except Exception as exc:
                if i == 0:
                    raise Failed(f"promote at {d.ref} failed: {type(exc).__name__}: {exc}") from None
                # one destination switched already: from here on only forward
                r = await self._record(r, step="promote", promoted_at=self.clock(),
                                       error=REGISTRY.redact(f"promote at {d.ref} failed: {type(exc).__name__}"))
                raise Failed(f"promote at {d.ref} failed: {type(exc).__name__}: {exc}") from None
        r = await self._record(r, step="promote", promoted_at=r.promoted_at or self.clock())
        if self.on_promote is not None:  # consumers told; a failure is recorded, the rotation goes on
            try:
                problems = await self.on_promote(r, self.adapter.with_credential(key, new))
            except Exception as exc:
                problems = [f"telling consumers: {type(exc).__name__}"]
            if problems:
                log.error("rotation_consumers_failed", rotation=r.id, key=r.key, problems=problems)
                r = await self._record(r, error=REGISTRY.redact("promote: " + "; ".join(problems))[:500])
        fault_after("promote")
        return r

    async def _grace_over(self, r: Rotation, key: ManagedKey) -> bool:
        promoted = r.promoted_at or r.updated_at
        now = self.clock()
        if self.policy.revoke_when == "unused" and r.old_credential:
            if now >= promoted + self.policy.max_unused_wait:
                return True
            try:
                creds = await self.adapter.list_credentials(key)
            except Exception:
                return False
            old = next((c for c in creds if c.id == r.old_credential), None)
            if old is None:
                return True
            return old.last_used_at is None or old.last_used_at < promoted
        return now >= promoted + self.policy.grace

    async def _retire(self, r: Rotation, key: ManagedKey) -> Rotation:
        old = r.old_credential
        if old and old != r.new_credential:
            r = await self._record(r, intent="retire_old")
            deactivated = False
            try:
                await self.adapter.deactivate_credential(key, old)
                deactivated = True
            except NotSupported:
                pass
            except Exception as exc:
                raise Failed(f"retire_old: deactivating {old} failed: {type(exc).__name__}: {exc}") from None
            note = None
            if self.policy.allow_destructive:
                try:
                    await self.adapter.delete_credential(key, old)
                except NotSupported:
                    pass
                except Exception as exc:
                    raise Failed(f"retire_old: deleting {old} failed: {type(exc).__name__}: {exc}") from None
            elif not deactivated:
                note = (f"retire_old: {key.provider} cannot deactivate {old} reversibly and allow_destructive is "
                        "off: the old credential still works; delete it in the provider's console")
            r = await self._record(r, step="retire_old", intent=None, error=note)
            fault_after("retire_old")
            return r
        r = await self._record(r, step="retire_old", intent=None)
        fault_after("retire_old")
        return r

    # -- rollback -----------------------------------------------------------------------------------
    async def rollback(self, r: Rotation, key: ManagedKey, reason: str) -> Rotation:
        """Before promote only: the new credential revoked, the pending values discarded; the old credential
        is never touched. Idempotent: a rollback interrupted by a crash resumes here."""
        if r.step not in BEFORE_PROMOTE:
            raise Failed(f"rotation {r.id} is past promote ({r.step}); it can only move forward")
        r = await self._record(r, state="rolling_back", error=reason)
        for d in self.destinations:
            try:
                await d.discard_pending(token=r.token)
            except Exception as exc:
                log.warning("rotation_discard_failed", rotation=r.id, destination=d.ref, error=type(exc).__name__)
        if r.mode != "assisted":
            new_id = r.new_credential
            if new_id is None:  # killed between the create call and recording its result: find it by name
                try:
                    found = [c for c in await self.adapter.list_credentials(key) if c.name == r.new_name]
                except Exception as exc:
                    return await self._record(r, error=f"{reason}; rollback: listing credentials failed: "
                                                        f"{type(exc).__name__} (will retry)")
                new_id = found[0].id if found else None
            if new_id is not None and new_id != r.old_credential:
                try:
                    await self.adapter.delete_credential(key, new_id)
                except NotSupported:
                    pass
                except Exception as exc:
                    return await self._record(r, error=f"{reason}; rollback: revoking {new_id} failed: "
                                                        f"{type(exc).__name__} (will retry)")
        self.new = None
        return await self._record(r, state="rolled_back", intent=None, finished_at=self.clock())
