"""The rotation capability inside the daemon (listed in keywatch.extensions.DAEMON_CAPABILITIES).

At start it resumes every rotation in flight (the `rotations` rows not finished): each completes or rolls
back from what its row records. A scheduler job (`rotation`, every `rotation.check_interval`) starts the
rotations that are due (a key older than its `rotate_every`, or a policy's by label) and moves the ones
waiting out their grace period. One rotation per key at a time, at most `rotation.max_in_flight` in
flight fleet-wide. `request()` starts one by hand (CLI, the `rotate` policy action).
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from keywatch.domain import Alert, Event, ManagedKey, Secret, Severity
from keywatch.providers.base import NewCredential, NotSupported
from keywatch.redact import REGISTRY
from keywatch.rotation.config import RotationSettings, rotate_every, seconds
from keywatch.rotation.consumers import Promotion, tell
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation, RotationStore
from keywatch.runtime import NotLeader, Runtime, keep_interval_job

log = structlog.get_logger("keywatch.rotation")
JOB_ID = "rotation"


def _fingerprint(value: Any) -> str | None:
    secret = value.secret if isinstance(value, NewCredential) else value
    return secret.fingerprint if isinstance(secret, Secret) else None


def settings_of(config: Any) -> RotationSettings:
    return getattr(config, "rotation", None) or RotationSettings()


def _or(value: float | None, default: float) -> float:
    return float(default) if value is None else value


def policy_for(key: ManagedKey, s: RotationSettings) -> Policy:
    o = key.options
    return Policy(
        grace=timedelta(seconds=_or(seconds(o.get("grace")), s.grace)),
        revoke_when=o.get("revoke_when") or "grace",
        max_unused_wait=timedelta(seconds=_or(seconds(o.get("rotation_max_unused_wait")), s.max_unused_wait)),
        verify_timeout=timedelta(seconds=float(s.verify_timeout)),
        verify_interval=float(s.verify_interval),
        allow_destructive=s.allow_destructive,
    )


@dataclass
class Started:
    ok: bool
    message: str
    rotation: Rotation | None = None


class _CurrentAdapter:
    """The adapter of the current inventory at every call: a reload replaces (and closes) the adapters,
    and a rotation outlives a reload."""

    def __init__(self, rt: Runtime, provider: str) -> None:
        self._rt, self._provider = rt, provider

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rt.adapter(self._provider), name)


class RotationService:
    def __init__(self, rt: Runtime, store: RotationStore) -> None:
        self.rt = rt
        self.store = store
        self.tasks: dict[str, asyncio.Task[Any]] = {}  # key -> the task driving its rotation
        self.machines: dict[str, Machine] = {}  # rotation id -> machine (holds the new secret in memory)
        self._lock = asyncio.Lock()
        reg = rt.registry
        self.total = Counter("keywatch_rotations", "Rotations finished, by provider and result",
                             ["provider", "result"], registry=reg)
        self.in_progress = Gauge("keywatch_rotation_in_progress", "1 for each rotation in flight, at its step",
                                 ["key", "step"], registry=reg)
        self.due = Gauge("keywatch_key_rotation_due_timestamp_seconds", "When the key is due for rotation",
                         ["key"], registry=reg)
        self.age = Gauge("keywatch_key_age_seconds", "Age of the key's credential (since created or last rotated)",
                         ["key"], registry=reg)
        self._shown: dict[str, str] = {}
        # The provider's creation time of each key's credential, by (key, fingerprint): it never changes for
        # one credential, so the timer asks the provider once, not at every check.
        self._created: dict[tuple[str, str], datetime | None] = {}
        self._modes: dict[tuple[str, str], str] = {}  # (key, fingerprint) -> rotation mode
        self._timer_starts: list[datetime] = []  # rotations the timer started in the last hour
        self._told_dry: set[tuple[str, str]] = set()  # (key, fingerprint) dry-run noted once
        self._alerted: set[tuple[str, str]] = set()  # (key, fingerprint) assisted: told a person already
        self._blast_firing = False
        # Set by the daemon's setup: how the daemon re-reads the key secrets after a promote (SIGHUP).
        self.reload: Any = None

    # -- plumbing -----------------------------------------------------------------------------------
    def _settings(self) -> RotationSettings:
        return settings_of(self.rt.inventory.config)

    def _safety(self) -> Any:
        """The [safety] section: its dry_run and per-hour limit apply to the timer as to every policy."""
        from keywatch.engine.policy_config import SafetySettings

        return getattr(self.rt.inventory.config, "safety", None) or SafetySettings()

    def _key(self, name: str) -> ManagedKey | None:
        return next((k for k in self.rt.inventory.keys if k.name == name), None)

    async def _live_key(self, name: str) -> ManagedKey | None:
        """The inventory's key, with the provider id of the credential its last rotation made: a
        `provider_key_id` (or IAM `access_key_id`) in the config names the credential that rotation retired."""
        key = self._key(name)
        if key is None:
            return None
        last = await asyncio.to_thread(self.store.last_done, name)
        if last is None or not last.new_credential or last.mode != "create":
            return key
        field = "access_key_id" if key.provider == "aws_iam" else "provider_key_id"
        if key.options.get(field) in (None, last.new_credential):
            return key
        return replace(key, options={**key.options, field: last.new_credential})

    def _destinations(self, key: ManagedKey) -> list[Any]:
        from keywatch.secretstores import open_destination

        cfg = getattr(self.rt.inventory.config, "secret_stores", None)
        return [open_destination(ref, cfg) for ref in key.options.get("publish") or []]

    async def _save(self, r: Rotation) -> None:
        await asyncio.to_thread(self.store.save, r)
        old = self._shown.pop(r.key, None)
        if old is not None:
            self.in_progress.remove(r.key, old)
        if r.active:
            self.in_progress.labels(r.key, r.step).set(1)
            self._shown[r.key] = r.step
        await self.rt.events.write(Event(self.rt.clock(), "rotation_step", r.key, r.actor,
                                         REGISTRY.redact(f"rotation {r.id[:8]}: {r.step} ({r.state})"
                                                         + (f": {r.error}" if r.error else "")),
                                         {"rotation": r.id, "step": r.step, "state": r.state}))

    async def _guard(self) -> None:
        if not await self.rt.still_leading():
            raise NotLeader(f"{self.rt.leadership.instance} does not lead")

    def _machine(self, r: Rotation, key: ManagedKey) -> Machine:
        m = self.machines.get(r.id)
        if m is None:
            m = Machine(_CurrentAdapter(self.rt, key.provider), self._destinations(key), self._save, self.rt.clock,
                        policy_for(key, self._settings()), on_promote=self._promoted, guard=self._guard)
            self.machines[r.id] = m
        return m

    async def _promoted(self, r: Rotation, new_key: ManagedKey) -> list[str]:
        """Consumers told (rotation.consumers: the pools holding the key, promote_command, promote_webhook),
        then the daemon re-reads its key secrets (a key whose secret is the destination it publishes to now
        probes the new credential). Returns what could not be told."""
        log.info("rotation_promoted", rotation=r.id, key=r.key, fingerprint=new_key.fingerprint)
        settings = self._settings()
        old = self._key(r.key)
        promotion = Promotion(r.id, r.key, r.provider, new_key.fingerprint, old.fingerprint if old else "",
                              tuple(new_key.options.get("publish") or ()), self.rt.clock().timestamp())
        from keywatch.settings.secrets import is_reference, resolve

        secrets: list[str] = []
        problems: list[str] = []
        webhook = new_key.options.get("promote_webhook")
        if webhook and is_reference(webhook):
            try:
                webhook = resolve(webhook).reveal()
            except Exception as exc:
                problems.append(f"promote_webhook {new_key.options['promote_webhook']}: {REGISTRY.redact(str(exc))}")
                webhook = None
        if webhook and settings.webhook_secret:
            try:
                secrets = [resolve(settings.webhook_secret).reveal()]
            except Exception as exc:
                problems.append(f"rotation.webhook_secret: {REGISTRY.redact(str(exc))}")
        if new_key.secret is not None:
            problems += await tell(new_key, promotion, new_key.secret, command=new_key.options.get("promote_command"),
                                   webhook=webhook, webhook_secrets=secrets,
                                   timeout=float(settings.consumer_timeout))
        if self.reload is not None:
            self.reload()
        return problems

    def _in_flight(self) -> list[Rotation]:
        return self.store.active()

    # -- starting -----------------------------------------------------------------------------------
    async def request(self, name: str, *, actor: str, reason: str, dry_run: bool = False,
                      new_secret: Any = None) -> Started:
        """Start a rotation of `name` now (CLI, the `rotate` action, the timer)."""
        key = await self._live_key(name)
        if key is None:
            return Started(False, f"no enabled key named {name!r}")
        async with self._lock:
            active = await asyncio.to_thread(self._in_flight)
            mine = next((r for r in active if r.key == name), None)
            if mine is not None:
                return Started(False, f"{name}: rotation {mine.id[:8]} is already in flight ({mine.step})", mine)
            limit = self._settings().max_in_flight
            if len(active) >= limit:
                return Started(False, f"{name}: {len(active)} rotations in flight (rotation.max_in_flight = {limit})")
            if key.provider in self.rt.board.outages:
                return Started(False, f"{name}: {key.provider} is in outage; no rotation starts")
            adapter = self.rt.adapter(key.provider)
            try:
                support = await adapter.rotation_support(key)
            except Exception as exc:
                return Started(False, f"{name}: rotation support unknown: {type(exc).__name__}")
            if support.mode == "none":
                return Started(False, f"{name}: {key.provider} cannot rotate: {support.reason}")
            if not key.options.get("publish"):
                return Started(False, f"{name}: no `publish` destinations on the key; "
                                      "nothing would receive the new key")
            self._modes[(key.name, key.fingerprint)] = support.mode
            if support.mode == "assisted" and new_secret is None:
                await self._assisted_alert(key, support.reason)
                return Started(False, f"{name}: assisted rotation: {support.reason}")
            if support.mode == "assisted" and _fingerprint(new_secret) == key.fingerprint:
                return Started(False, f"{name}: the new secret is the key in use; nothing to rotate to")
            if dry_run:
                return Started(True, f"would rotate {name} ({support.mode}): create, publish to "
                                     f"{', '.join(key.options['publish'])}, verify, promote, grace, retire the old key")
            r = new_rotation(key, support.mode, actor=actor, reason=reason, at=self.rt.clock())
            m = self._machine(r, key)
            if new_secret is not None:
                m.new = new_secret if isinstance(new_secret, NewCredential) else NewCredential("", new_secret, {})
            try:
                await self._save(r)
            except NotLeader:
                self.machines.pop(r.id, None)
                return Started(False, f"{name}: this instance no longer leads; the leader starts rotations")
        self._drive(r, key)
        return Started(True, f"rotation {r.id[:8]} of {name} started ({support.mode})", r)

    def _drive(self, r: Rotation, key: ManagedKey) -> None:
        task = self.tasks.get(r.key)
        if task is not None and not task.done():
            return
        self.tasks[r.key] = asyncio.ensure_future(self._run(r, key))

    async def _run(self, r: Rotation, key: ManagedKey) -> None:
        if not await self.rt.still_leading():
            return
        try:
            out = await self._machine(r, key).run(r, key)
        except NotLeader:  # another instance leads now: it resumes the rotation from its last record
            self.machines.pop(r.id, None)
            log.info("rotation_handed_over", rotation=r.id, key=r.key, step=r.step)
            return
        except Exception as exc:
            log.exception("rotation_crashed", rotation=r.id, key=r.key)
            out = r
            await self._alert(key, out, f"{type(exc).__name__}", firing=True)
            return
        if out.state in ("done", "rolled_back"):
            self.machines.pop(out.id, None)
            self.total.labels(key.provider, "ok" if out.state == "done" else "rolled_back").inc()
            await self._alert(key, out, out.error or "", firing=out.state == "rolled_back")
            if out.state == "done" and out.mode == "assisted":  # the person did it: the reminder is over
                self._alerted = {a for a in self._alerted if a[0] != key.name}
                await self.rt.emit_alert(Alert(
                    identity=f"rotation_due:{key.name}", severity=Severity.WARNING, firing=False,
                    title=f"{key.name}: rotated", summary=f"rotation {out.id[:8]} done", at=self.rt.clock(),
                    key=key.name, provider=key.provider, labels=dict(key.labels),
                    fields={"fingerprint": key.fingerprint},
                ))
        elif out.error:
            await self._alert(key, out, out.error, firing=True)

    async def _alert(self, key: ManagedKey, r: Rotation, message: str, *, firing: bool) -> None:
        await self.rt.emit_alert(Alert(
            identity=f"rotation_failed:{key.name}", severity=Severity.CRITICAL, firing=firing,
            title=f"{key.name}: rotation {r.id[:8]} " + ("stopped at " + r.step if firing else r.state),
            summary=REGISTRY.redact(message or f"rotation {r.state}"), at=self.rt.clock(), key=key.name,
            provider=key.provider, labels=dict(key.labels),
            fields={"rotation": r.id, "step": r.step, "state": r.state, "fingerprint": key.fingerprint},
        ))

    async def _assisted_alert(self, key: ManagedKey, reason: str) -> None:
        watched = self._watches(key)
        then = (f"put it in {key.secret_ref} (keywatch re-reads it every rotation.check_interval and rotates to "
                f"it), or run `keywatch rotate {key.name} --new-secret REF`" if watched
                else f"run `keywatch rotate {key.name} --new-secret REF`")
        await self.rt.emit_alert(Alert(
            identity=f"rotation_due:{key.name}", severity=Severity.WARNING, firing=True,
            title=f"{key.name}: due for rotation, a person must create the new key",
            summary=f"{reason} Create a new key in the {key.provider} console, then {then}.",
            at=self.rt.clock(), key=key.name, provider=key.provider, labels=dict(key.labels),
            fields={"fingerprint": key.fingerprint},
        ))

    async def abort(self, rotation_id: str) -> Started:
        r = await asyncio.to_thread(self.store.get, rotation_id)
        if r is None or not r.active:
            return Started(False, f"no rotation {rotation_id} in flight")
        key = self._key(r.key)
        if key is None:
            return Started(False, f"{r.key}: no longer in the inventory")
        try:
            out = await self._machine(r, key).rollback(r, key, "aborted by hand")
        except Exception as exc:
            return Started(False, REGISTRY.redact(str(exc)))
        return Started(out.state == "rolled_back", f"rotation {r.id[:8]}: {out.state}", out)

    # -- the timer ----------------------------------------------------------------------------------
    async def age_of(self, key: ManagedKey) -> datetime | None:
        last = await asyncio.to_thread(self.store.last_done, key.name)
        if last is not None and last.finished_at is not None:
            return last.promoted_at or last.finished_at
        slot = (key.name, key.fingerprint)
        if slot in self._created:
            return self._created[slot]
        try:
            cred = await self.rt.adapter(key.provider).current_credential(key)
        except NotSupported:
            self._created[slot] = None  # the provider tells no creation time: asking again cannot help
            return None
        except Exception:
            return None  # down, or refused: asked again at the next check
        self._created[slot] = cred.created_at
        return cred.created_at

    # -- assisted rotation: watching the key's secret source ----------------------------------------
    def _watches(self, key: ManagedKey) -> bool:
        own = key.options.get("watch_source")
        return bool(self._settings().watch_sources if own is None else own)

    async def read_source(self, key: ManagedKey) -> Secret | None:
        """The key's secret reference read now (not the cached value): file, envfile, aws-sm, azure-kv,
        env, credential. None when it cannot be read (logged, named by reference, never a value)."""
        from keywatch.secretstores import open_destination, scheme_of
        from keywatch.settings.secrets import resolve

        ref = key.secret_ref
        try:
            if scheme_of(ref) is not None:
                return await open_destination(ref, getattr(self.rt.inventory.config, "secret_stores", None)).read()
            return await asyncio.to_thread(resolve, ref)
        except Exception as exc:
            log.warning("rotation_source_unreadable", key=key.name, ref=ref, error=type(exc).__name__,
                        reason=REGISTRY.redact(str(exc))[:200])
            return None

    async def _watch(self, key: ManagedKey) -> Started | None:
        """A due assisted key: a new value in its secret source (another fingerprint) starts the rotation."""
        value = await self.read_source(key)
        if value is None or value.fingerprint == key.fingerprint:
            return None
        REGISTRY.add([value.reveal()])
        return await self.request(key.name, actor="watch", reason=f"a new value appeared in {key.secret_ref}",
                                  new_secret=value)

    # -- the timer's blast radius ---------------------------------------------------------------------
    def _timer_room(self, now: datetime) -> bool:
        """The timer counts as one policy: at most safety.max_actions_per_policy_per_hour rotations an hour."""
        self._timer_starts = [t for t in self._timer_starts if now - t < timedelta(hours=1)]
        return len(self._timer_starts) < self._safety().max_actions_per_policy_per_hour

    async def _blast(self, now: datetime, limit: int, firing: bool) -> None:
        await self.rt.emit_alert(Alert(
            identity="blast_radius:rotation", severity=Severity.CRITICAL, firing=firing,
            title="rotation timer stopped: too many rotations this hour" if firing else "rotation timer starts again",
            summary=(f"the timer started {limit} rotations in the last hour "
                     f"(safety.max_actions_per_policy_per_hour = {limit}); due keys wait") if firing
            else "rotations due are started again", at=now, fields={"limit": str(limit)},
        ))

    async def check(self) -> None:
        """Resume what is in flight, start what is due (only on the instance that leads)."""
        if not await self.rt.still_leading():
            return
        now = self.rt.clock()
        active = {r.key: r for r in await asyncio.to_thread(self._in_flight)}
        for name, r in active.items():
            key = self._key(name)
            if key is not None:
                self._drive(r, key)
        settings = self._settings()
        safety = self._safety()
        blocked = False
        for key in self.rt.inventory.keys:
            every = rotate_every(key, settings)
            if every is None or key.name in active:
                continue
            since = await self.age_of(key)
            if since is None:
                continue
            self.age.labels(key.name).set((now - since).total_seconds())
            due = since + timedelta(seconds=every)
            self.due.labels(key.name).set(due.timestamp())
            if now < due:
                continue
            reason = f"older than rotate_every ({every:.0f}s)"
            if safety.dry_run:  # like every action: decided and recorded, nothing done
                if (key.name, key.fingerprint) not in self._told_dry:
                    self._told_dry.add((key.name, key.fingerprint))
                    await self.rt.events.write(Event(now, "rotation_dry_run", key.name, "timer",
                                                     f"dry run: would rotate {key.name} ({reason})", {}))
                    log.info("rotation_dry_run", key=key.name, reason=reason)
                continue
            if not self._timer_room(now):
                blocked = True
                continue
            if self._modes.get((key.name, key.fingerprint)) == "assisted" and self._watches(key):
                started = await self._watch(key)
                if started is not None:
                    log.info("rotation_source_changed", key=key.name, started=started.ok, message=started.message)
                    if started.ok:
                        self._timer_starts.append(now)
                    continue
                if (key.name, key.fingerprint) in self._alerted:
                    continue  # told already; the source is read again at the next check
            started = await self.request(key.name, actor="timer", reason=reason)
            if started.ok:
                self._timer_starts.append(now)
            elif self._modes.get((key.name, key.fingerprint)) == "assisted":
                self._alerted.add((key.name, key.fingerprint))
                if self._watches(key):  # the alert is out; the source may hold the new value already
                    started = await self._watch(key) or started
                    if started.ok:
                        self._timer_starts.append(now)
            log.info("rotation_due", key=key.name, started=started.ok, message=started.message)
        if blocked != self._blast_firing:
            self._blast_firing = blocked
            await self._blast(now, safety.max_actions_per_policy_per_hour, blocked)

    async def scheduled(self) -> None:
        try:
            await self.check()
        except Exception:
            log.exception("rotation_check_failed")

    def ensure_job(self) -> None:
        s = self._settings()
        keep_interval_job(self.rt.scheduler, JOB_ID, self.scheduled, s.check_interval if s.enabled else None)

    async def on_cycle(self, report: Any) -> None:
        self.ensure_job()

    async def aclose(self) -> None:
        from keywatch.engine.actions import rotate as rotate_action

        rotate_action.attach(None)
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def setup(rt: Runtime) -> RotationService:
    store = RotationStore(rt.store.engine)
    svc = RotationService(rt, store)
    rt.on_cycle("rotation", svc.on_cycle)
    from keywatch.engine.actions import rotate as rotate_action

    rotate_action.attach(svc.request)
    svc.reload = lambda: os.kill(os.getpid(), signal.SIGHUP)  # the daemon reloads on SIGHUP
    if settings_of(rt.inventory.config).enabled:
        rt.spawn([asyncio.ensure_future(svc.check())])  # resume rotations in flight at start
    return svc
