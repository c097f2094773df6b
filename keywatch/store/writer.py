"""The daemon's database writer: one thread writes what the cycles hand it, in order, so a slow, locked or
read-only database never holds up probing.

What waits in the queue: key states (the latest per key: a newer state replaces an older one), probe
rollups (summed per key, hour and health), transitions and events (in the order they came, bounded: past
`limit` the oldest are dropped and counted by kind). Each write takes everything queued and writes it in
one transaction. A failed write puts its batch back at the head of the queue, closes the pooled
connections (a fresh one sees a fixed file or permission) and is retried after a pause that grows to
`max_pause`. Before each batch the SQLite file is checked to be the one opened at start: a removed or
replaced file is reported (`lost`) and nothing is written until the same file is back; it is never
recreated under the running daemon.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from keywatch.domain import Event, KeyState, Rollup, Transition
from keywatch.heap import release_freed_memory
from keywatch.store.repo import DatabaseLost, Store, db_error

log = structlog.get_logger("keywatch.daemon")

LIMIT = 100_000  # transitions, events and rollup rows each, while the database cannot be written


@dataclass
class WriteStatus:
    """What the last write attempt found. `lost`: the SQLite file was removed or replaced."""

    ok: bool
    error: str | None = None
    lost: bool = False


@dataclass
class _Queue:
    states: dict[str, KeyState] = field(default_factory=dict)
    # One cycle's rollups as they came (the usual batch: written as they are), or, once a second lot joins
    # them (the writer behind, the database down), summed per key, hour and health, so the queue grows with
    # keys and hours, not with cycles. The store adds up rows of the same key, hour and health either way.
    fresh: list[Rollup] = field(default_factory=list)
    rollups: dict[tuple[str, datetime, str], Rollup] = field(default_factory=dict)
    transitions: deque[Transition] = field(default_factory=deque)
    events: deque[Event] = field(default_factory=deque)
    waiters: list[Future[None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.states or self.fresh or self.rollups or self.transitions or self.events or self.waiters)

    def counts(self) -> dict[str, int]:
        return {"states": len(self.states), "transitions": len(self.transitions),
                "rollups": len(self.fresh) + len(self.rollups), "events": len(self.events)}

    def all_rollups(self) -> list[Rollup]:
        return self.fresh or list(self.rollups.values())

    def add_rollups(self, rollups: Iterable[Rollup]) -> None:
        if not self.fresh and not self.rollups:
            self.fresh = list(rollups)
            return
        self.summed()
        self._sum(rollups)

    def summed(self) -> dict[tuple[str, datetime, str], Rollup]:
        self._sum(self.fresh)
        self.fresh = []
        return self.rollups

    def _sum(self, rollups: Iterable[Rollup]) -> None:
        for r in rollups:
            k = (r.key, r.hour, r.health)
            old = self.rollups.get(k)
            self.rollups[k] = r if old is None else Rollup(
                r.key, r.hour, r.health, old.count + r.count, old.latency_sum_ms + r.latency_sum_ms,
                max(old.latency_max_ms, r.latency_max_ms))

    def put_back(self, newer: _Queue) -> None:
        """`self` is a batch that failed; `newer` what came while it was tried. Keeps the order."""
        self.states.update(newer.states)
        self.add_rollups(newer.all_rollups())
        self.transitions.extend(newer.transitions)
        self.events.extend(newer.events)
        self.waiters.extend(newer.waiters)




class DatabaseWriter:
    def __init__(
        self,
        store: Store,
        *,
        on_status: Callable[[WriteStatus], None],
        on_drop: Callable[[str, int], None],
        prepare: Callable[[], None] | None = None,
        limit: int = LIMIT,
        first_pause: float = 0.5,
        max_pause: float = 2.0,
    ) -> None:
        self.store = store
        self.on_status = on_status
        self.on_drop = on_drop
        self.prepare = prepare
        self.limit = limit
        self.first_pause, self.max_pause = first_pause, max_pause
        self.status = WriteStatus(ok=True)
        self._status_lock = threading.Lock()
        self._queue = _Queue()
        self._cond = threading.Condition()
        self._pause = 0.0
        self._retry_at = 0.0
        self._busy_since: float | None = None
        self._stopping = False
        self._final_tried = False
        self._thread = threading.Thread(target=self._run, name="keywatch-db-writer", daemon=True)

    # -- the asyncio side -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(
        self,
        states: Sequence[KeyState] = (),
        transitions: Sequence[Transition] = (),
        rollups: Iterable[Rollup] = (),
        events: Sequence[Event] = (),
        *,
        wait: bool = True,
    ) -> Future[None] | None:
        """Queue for writing. Never blocks, never raises. With `wait`, the future returned is done once all
        of it is stored (a caller that will not wait, because the writer is behind, passes False)."""
        fut: Future[None] | None = Future() if wait else None
        with self._cond:
            q = self._queue
            for st in states:
                q.states[st.key] = st
            q.add_rollups(rollups)
            q.transitions.extend(transitions)
            q.events.extend(events)
            if fut is not None:
                q.waiters.append(fut)
            self._bound(q)
            self._cond.notify()
        return fut

    @property
    def caught_up(self) -> bool:
        """The last write worked and none is taking long: a caller may wait for its batch."""
        return self.status.ok and not self.stalled(1.0)

    def stalled(self, after: float) -> bool:
        """A write has been under way for more than `after` seconds."""
        since = self._busy_since
        return since is not None and time.monotonic() - since > after

    def check(self) -> WriteStatus:
        """Check the SQLite file now (one stat), between writes too: a file removed while nothing is being
        written is reported at once, not at the next write."""
        if not self.status.lost:
            try:
                self.store.check_file()
            except DatabaseLost as exc:
                self.store.reset_connections()  # pooled connections would go on writing to the removed file
                self._report(WriteStatus(ok=False, error=str(exc), lost=True))
        return self.status

    def pending(self) -> dict[str, int]:
        with self._cond:
            return self._queue.counts()

    def close(self, timeout: float) -> tuple[dict[str, int], list[Transition]]:
        """Stop after one last attempt at what is queued (made at once, whatever the pause). Returns what
        is still unwritten: counts by kind and the transitions themselves, for the caller to report."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cond:
            q = self._queue
            return q.counts(), list(q.transitions)

    # -- the thread -------------------------------------------------------------------------------------
    def _bound(self, q: _Queue) -> None:
        for kind, items in (("transitions", q.transitions), ("events", q.events)):
            over = len(items) - self.limit
            if over > 0:
                for _ in range(over):
                    items.popleft()
                self.on_drop(kind, over)
        over = len(q.fresh) + len(q.rollups) - self.limit
        if over > 0:
            summed = q.summed()
            over = len(summed) - self.limit
            for k in sorted(summed, key=lambda k: k[1])[:max(over, 0)]:  # the oldest hours first
                del summed[k]
            if over > 0:
                self.on_drop("rollups", over)

    def _take(self) -> _Queue | None:
        """The next batch, or None to end the thread."""
        with self._cond:
            while True:
                if self._stopping:
                    if not self._queue or self._final_tried:
                        return None
                    self._final_tried = True
                    break
                wait = self._retry_at - time.monotonic()
                if self._queue and wait <= 0:
                    break
                self._cond.wait(timeout=wait if self._queue else None)
            batch, self._queue = self._queue, _Queue()
            self._busy_since = time.monotonic()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                if self.prepare is not None:
                    self.prepare()
                self.store.check_file()
                self.store.write_batch(list(batch.states.values()), list(batch.transitions),
                                       batch.all_rollups(), list(batch.events))
            except Exception as exc:
                lost = isinstance(exc, DatabaseLost)
                with contextlib.suppress(Exception):
                    self.store.reset_connections()
                with self._cond:
                    self._busy_since = None
                    batch.put_back(self._queue)
                    self._queue = batch
                    self._bound(batch)
                    self._pause = min(self.max_pause, self._pause * 2 or self.first_pause)
                    self._retry_at = time.monotonic() + self._pause
                self._report(WriteStatus(ok=False, error=str(exc) if lost else db_error(exc), lost=lost))
                continue
            with self._cond:
                self._busy_since = None
                self._pause = self._retry_at = 0.0
            # Let go of the batch before its waiters hear it is stored: it is not kept while the thread waits for
            # the next one (every probed key's rollups and states).
            waiters, batch = batch.waiters, None
            release_freed_memory()  # the rows and the driver's buffers, freed in this thread's own heap
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            self._report(WriteStatus(ok=True))

    def _report(self, status: WriteStatus) -> None:
        with self._status_lock:
            changed = status != self.status
            self.status = status
        if changed:
            try:
                self.on_status(status)
            except Exception:
                log.exception("database_status_hook_failed")
