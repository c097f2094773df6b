"""The in-memory picture of every key: what metrics read at scrape time and what the store persists.

`apply` turns a probe result into the new state and, only when health changed, a Transition.

Hourly rollups cost nothing per probe in the usual case: a key probed once since the last drain (every key,
in a steady cycle) is only remembered by name, and its rollup is read off its state at the drain. Counters
(a tuple and a list per key and hour) are kept only for a key probed again before the drain, or whose state
is replaced otherwise meanwhile; they were the largest part of what a cycle allocated and let go.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from keywatch.domain import Health, KeyState, ManagedKey, ProbeResult, Rollup, Transition


class StateTracker:
    def __init__(self, initial: dict[str, KeyState] | None = None) -> None:
        self._lock = threading.Lock()
        self.states: dict[str, KeyState] = dict(initial or {})
        self._rollups: dict[tuple[str, datetime, str], list[float]] = {}  # counters, for keys in _counted
        self._once: set[str] = set()  # probed once since the drain: that probe is the key's current state
        self._counted: set[str] = set()  # the keys with counters (never in _once)
        self._dirty: set[str] = set()
        self._hour: datetime | None = None

    def snapshot(self) -> dict[str, KeyState]:
        with self._lock:
            return dict(self.states)

    def sync_inventory(self, keys: list[ManagedKey]) -> list[str]:
        """Add new keys as `unknown`, drop removed ones, refresh fingerprints and labels. Returns removed names."""
        with self._lock:
            wanted = {k.name: k for k in keys}
            removed = [name for name in self.states if name not in wanted]
            for name in removed:
                self._settle(name)  # a removed key's last probe is still counted
                del self.states[name]
            for k in keys:
                old = self.states.get(k.name)
                if old is None:
                    self.states[k.name] = KeyState(
                        key=k.name, provider=k.provider, fingerprint=k.fingerprint, masked=k.masked,
                        labels=k.labels,  # the inventory's own (shared, never changed): no copy per key
                    )
                    self._dirty.add(k.name)
                elif (old.fingerprint, old.labels, old.provider, old.masked) != (
                    k.fingerprint, k.labels, k.provider, k.masked
                ):
                    # A new secret under the same name is a new key as far as health goes.
                    fresh = old.fingerprint != k.fingerprint
                    self._settle(k.name)
                    self.states[k.name] = replace(
                        old, provider=k.provider, fingerprint=k.fingerprint, masked=k.masked, labels=k.labels,
                        **({"health": Health.UNKNOWN, "consecutive": 0, "health_since": None,
                            "compromised": False, "compromise_reason": None} if fresh else {}),
                    )
                    self._dirty.add(k.name)
            return removed

    def apply(self, r: ProbeResult) -> Transition | None:
        with self._lock:
            old = self.states.get(r.key)
            if old is None:  # removed from the inventory while its probe was in flight
                return None
            changed = old.health != r.health
            # Built field by field rather than by dataclasses.replace: this runs once per probe.
            new = KeyState(
                key=old.key, provider=old.provider, fingerprint=old.fingerprint, masked=old.masked,
                health=r.health, admin_state=old.admin_state,
                health_since=r.checked_at if changed or old.health_since is None else old.health_since,
                last_probe_at=r.checked_at,
                consecutive=1 if changed else old.consecutive + 1,
                http_status=r.http_status, error_code=r.error_code, error_message=r.error_message,
                latency_ms=r.latency_ms,
                ratelimit=r.ratelimit if r.ratelimit is not None else (old.ratelimit if not changed else None),
                compromised=r.compromised, compromise_reason=r.compromise_reason, labels=old.labels,
            )
            self.states[r.key] = new
            self._dirty.add(r.key)
            if r.key in self._counted:
                self._count(r.key, r.checked_at, r.health.value, 1, r.latency_ms, r.latency_ms)
            elif r.key in self._once:  # probed again before the drain: both probes counted from now on
                self._settle(r.key, old)
                self._count(r.key, r.checked_at, r.health.value, 1, r.latency_ms, r.latency_ms)
            else:
                self._once.add(r.key)
        if not changed:
            return None
        return Transition(r.key, r.provider, old.health, r.health, r.checked_at, r.http_status, r.error_code,
                          r.error_message)

    def set(self, state: KeyState) -> None:
        with self._lock:
            self._settle(state.key)
            self.states[state.key] = state
            self._dirty.add(state.key)

    def adopt(self, states: Iterable[KeyState]) -> None:
        """States another instance probed (read from the shared database): taken as they are, not marked
        for writing (their prober writes them), and only for keys of this inventory with the same secret."""
        with self._lock:
            for st in states:
                cur = self.states.get(st.key)
                if cur is not None and cur.fingerprint == st.fingerprint:
                    self._settle(st.key)
                    self.states[st.key] = replace(st, labels=cur.labels, masked=cur.masked)

    def drain(self) -> tuple[list[KeyState], list[Rollup]]:
        """What changed since the last drain: states to write and rollups to add."""
        with self._lock:
            states = [self.states[k] for k in self._dirty if k in self.states]
            rollups = [Rollup(k, h, health, int(v[0]), v[1], v[2]) for (k, h, health), v in self._rollups.items()]
            for name in self._once:
                st = self.states[name]
                assert st.last_probe_at is not None and st.latency_ms is not None
                rollups.append(Rollup(name, self._hour_of(st.last_probe_at), st.health.value, 1, st.latency_ms,
                                      st.latency_ms))
            self._dirty.clear()
            self._rollups.clear()
            self._once.clear()
            self._counted.clear()
        return states, rollups

    def restore(self, states: list[KeyState], rollups: list[Rollup]) -> None:
        """Put back what a failed write could not store, so the next cycle writes it."""
        with self._lock:
            self._dirty.update(s.key for s in states if s.key in self.states)
            for r in rollups:
                self._settle(r.key)
                self._count(r.key, r.hour, r.health, r.count, r.latency_sum_ms, r.latency_max_ms, exact=True)

    # -- rollups (called with the lock held) ---------------------------------------------------------
    def _settle(self, name: str, state: KeyState | None = None) -> None:
        """A key probed once since the drain, about to get a state that is not that probe: its probe moves
        to counters (read off `state`, else its current state)."""
        if name not in self._once:
            return
        self._once.discard(name)
        st = state or self.states[name]
        assert st.last_probe_at is not None and st.latency_ms is not None
        self._count(name, st.last_probe_at, st.health.value, 1, st.latency_ms, st.latency_ms)

    def _count(self, name: str, at: datetime, health: str, count: int, latency_sum: float, latency_max: float,
               exact: bool = False) -> None:
        self._counted.add(name)
        acc = self._rollups.setdefault((name, at if exact else self._hour_of(at), health), [0, 0.0, 0.0])
        acc[0] += count
        acc[1] += latency_sum
        acc[2] = max(acc[2], latency_max)

    def _hour_of(self, at: datetime) -> datetime:
        """The hour `at` falls in: one datetime object for the hour a cycle's probes share, not one per probe."""
        hour = at.replace(minute=0, second=0, microsecond=0)
        if hour == self._hour:
            return self._hour
        self._hour = hour
        return hour
