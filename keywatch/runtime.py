"""The contract between the daemon and its capabilities (alerts, policies, usage).

The daemon builds one `Runtime` and hands it to each capability's `setup()`. A capability reads what it
needs from it and registers what it adds (cycle hooks, transition listeners, background tasks, an alert
sink); it never reads or sets attributes on the daemon. What one capability tells another goes through a
typed board: `SignalBoard` for facts about keys and providers, `AlertBus` for alerts, `EventLog` for the
audit trail.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from keywatch.domain import Alert, Event, KeyState, ProbeResult, Signal, Transition
from keywatch.web import Routes

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from prometheus_client import CollectorRegistry
    from sqlalchemy.orm import Session

    from keywatch.providers.base import ProviderAdapter
    from keywatch.settings.loader import Inventory
    from keywatch.state import StateTracker
    from keywatch.store.repo import Store

log = structlog.get_logger("keywatch.runtime")


@dataclass
class CycleReport:
    """What one probe cycle saw; handed to every cycle hook. `probed` names the keys this instance probed, in
    the order they answered: what each probe found is that key's state in the tracker (health, error,
    latency, the compromise flag), so the cycle keeps no result per key. `compromised`: the probes that
    found the provider signalling a key as exposed (few, and kept whole)."""

    started_at: datetime
    probed: list[str]
    transitions: list[Transition]
    inventory: Inventory
    compromised: list[ProbeResult] = field(default_factory=list)
    duration_s: float = 0.0

    def seen(self, states: Mapping[str, KeyState]) -> list[KeyState]:
        """The states of the keys probed this cycle, from a snapshot of the tracker (a key removed by a
        reload while its probe was in flight has none)."""
        return [st for st in map(states.get, self.probed) if st is not None]


CycleHook = Callable[["CycleReport"], Awaitable[None]]
TransitionListener = Callable[[Transition], None]
AlertSink = Callable[[Alert], Awaitable[None]]


def keep_interval_job(scheduler: Any, job_id: str, func: Callable[[], Awaitable[None]], interval: float | None) -> None:
    """Keep a capability's periodic job in step with the config (called at setup and after every cycle, so a
    reload applies): added, first run now, when `interval` is set and the job is missing; rescheduled when
    the interval changed; removed when `interval` is None. Nothing while the scheduler has not started."""
    if scheduler is None:
        return
    job = scheduler.get_job(job_id)
    if interval is None:
        if job is not None:
            scheduler.remove_job(job_id)
        return
    from apscheduler.triggers.interval import IntervalTrigger

    trigger = IntervalTrigger(seconds=interval, timezone=UTC)
    if job is None:
        scheduler.add_job(func, trigger, id=job_id, next_run_time=datetime.now(UTC), max_instances=1, coalesce=True,
                          misfire_grace_time=int(interval))
    elif job.trigger.interval != timedelta(seconds=interval):
        scheduler.reschedule_job(job_id, trigger=trigger)


class SignalBoard:
    """Facts one capability raises about keys for another to read: budgets raise `budget_exhausted`,
    leak intake and provider probes `compromised`; the policy engine reads them, the pools honour them.
    Providers in outage are on the board too, so nothing acts on a provider that is down."""

    def __init__(self) -> None:
        self._keys: dict[Signal, frozenset[str]] = {}
        self._by: dict[Signal, dict[str, frozenset[str]]] = {}  # signal -> raiser -> its keys
        self._outages: dict[str, datetime] = {}

    def set(self, signal: Signal, keys: Iterable[str], *, by: str = "") -> None:
        """The keys carrying `signal` now, as raised by `by` (replaces that raiser's previous set). Several
        raisers may raise one signal (the leak receivers and the scheduled scans both raise `compromised`):
        a key carries it while any of them raises it."""
        raisers = self._by.setdefault(signal, {})
        raisers[by] = frozenset(keys)
        self._keys[signal] = frozenset().union(*raisers.values())

    def keys_with(self, signal: Signal) -> frozenset[str]:
        return self._keys.get(signal, frozenset())

    def of(self, key: str) -> frozenset[str]:
        """The signal names `key` carries (as policies' `signals` conditions name them)."""
        return frozenset(str(s) for s, keys in self._keys.items() if key in keys)

    def as_map(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for s, keys in self._keys.items():
            for k in keys:
                out.setdefault(k, set()).add(str(s))
        return {k: frozenset(v) for k, v in out.items()}

    def set_outages(self, ongoing: Mapping[str, datetime]) -> None:
        self._outages = dict(ongoing)

    @property
    def outages(self) -> Mapping[str, datetime]:
        """Provider -> since when it is in outage."""
        return self._outages


async def log_alert(alert: Alert) -> None:
    """Where alerts go while no alert pipeline is attached: the log."""
    (log.warning if alert.firing else log.info)(
        "alert", identity=alert.identity, severity=str(alert.severity), firing=alert.firing, title=alert.title,
        summary=alert.summary, key=alert.key, provider=alert.provider,
    )


class AlertBus:
    """Every capability raises and resolves alerts here; the alert pipeline attaches itself as the sink."""

    def __init__(self) -> None:
        self._sink: AlertSink = log_alert
        self._firing: Callable[[], list[Alert]] = list

    def attach(self, sink: AlertSink, firing: Callable[[], list[Alert]] | None = None) -> None:
        """`firing` returns the alerts the sink holds as firing (durably): after a restart, whoever raised
        one of them can still resolve it."""
        self._sink = sink
        if firing is not None:
            self._firing = firing

    def firing(self) -> list[Alert]:
        """Every alert raised and not resolved, as the attached pipeline remembers them across restarts."""
        try:
            return self._firing()
        except Exception:
            log.exception("alert_firing_read_failed")
            return []

    async def emit(self, alert: Alert) -> None:
        """Never raises: a sink outage must not stop detection."""
        try:
            await self._sink(alert)
        except Exception:
            log.exception("alert_emit_failed", identity=alert.identity)


class EventLog:
    """The audit trail's way in. `record` queues (written with the cycle's batch); `write` writes through
    at once (an action's "started" line must exist if the process dies) and queues when it cannot.
    `write_through`, when given, does the writing (the daemon's writer: in order, never blocking long)."""

    def __init__(
        self,
        store: Callable[[], Store | None],
        write_through: Callable[[list[Event]], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._write_through = write_through
        self.pending: list[Event] = []

    def record(self, event: Event) -> None:
        self.pending.append(event)

    async def write(self, event: Event) -> None:
        if self._write_through is not None:
            await self._write_through([event])
            return
        store = self._store()
        if store is None:
            self.pending.append(event)
            return
        try:
            await asyncio.to_thread(store.record_events, [event])
        except Exception:
            self.pending.append(event)

    def take(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out

    def put_back(self, events: list[Event]) -> None:
        self.pending = events + self.pending


class NotLeader(RuntimeError):
    """This instance does not lead (or no longer does): it must not act. `unconfirmed`: it still holds its
    term, which no heartbeat has confirmed for longer than the takeover timeout (the database away, the
    process frozen); it acts again once one does, so what it could not record may be tried again."""

    def __init__(self, message: str, *, unconfirmed: bool = False) -> None:
        super().__init__(message)
        self.unconfirmed = unconfirmed


class Leadership(Protocol):
    """Who may act. One instance alone always leads (`Solo`); instances sharing PostgreSQL elect one
    (keywatch.cluster). Every acting path (an action's start, a rotation step, a usage pull, an alert
    decision, an outbox send) calls `fence(session)` inside the transaction that records it: that raises
    NotLeader unless this instance's fencing token is still the current one, so a deposed leader records,
    and does, nothing."""

    instance: str

    @property
    def leading(self) -> bool: ...

    @property
    def token(self) -> int | None: ...

    def fence(self, session: Session) -> None: ...

    def details(self) -> dict[str, Any]: ...


class Solo:
    """The only instance: it always leads, nothing to check."""

    instance = "local"
    token = None
    leading = True

    def fence(self, session: Session) -> None:
        return None

    def details(self) -> dict[str, Any]:
        return {"instance": self.instance, "leader": True, "mode": "single"}


SOLO = Solo()
_LEADERSHIP: weakref.WeakKeyDictionary[Any, Leadership] = weakref.WeakKeyDictionary()


def attach_leadership(engine: Any, leadership: Leadership) -> None:
    """Make `fence()` on sessions of `engine` ask `leadership` (the daemon does this once, at start)."""
    _LEADERSHIP[engine] = leadership


def leadership_of(bind: Any) -> Leadership:
    """The leadership gate for an engine (or a connection of it); `SOLO` when none is attached."""
    engine = getattr(bind, "engine", bind)
    try:
        return _LEADERSHIP.get(engine, SOLO)
    except TypeError:
        return SOLO


def fence(session: Session) -> None:
    """The one fencing check, inside the caller's transaction. Raises NotLeader."""
    leadership_of(session.get_bind()).fence(session)


def confirm_leading(session_factory: Any) -> bool:
    """Blocking: True when this instance still leads, checked against the database (its own transaction).
    For acting paths whose records are written by code of their own (rotation steps, usage pulls)."""
    bind = getattr(session_factory, "kw", {}).get("bind")
    lead = leadership_of(bind)
    if lead is SOLO:
        return True
    if not lead.leading:
        return False
    try:
        with session_factory.begin() as s:
            lead.fence(s)
    except NotLeader:
        return False
    except Exception:
        log.warning("leadership_unconfirmed", reason="database")
        return False
    return True


class AdapterLookup(Protocol):
    def __call__(self, provider: str) -> ProviderAdapter: ...


@dataclass
class Runtime:
    """What a capability may use. The daemon owns the parts that change over its life (the inventory after
    a reload, the adapters built for it, the scheduler once started) and gives the runtime a way to read
    the current one."""

    tracker: StateTracker
    registry: CollectorRegistry
    current_store: Callable[[], Store]
    current_inventory: Callable[[], Inventory]
    adapter: AdapterLookup
    current_scheduler: Callable[[], AsyncIOScheduler | None]
    events: EventLog
    leadership: Leadership = field(default_factory=lambda: SOLO)
    board: SignalBoard = field(default_factory=SignalBoard)
    alerts: AlertBus = field(default_factory=AlertBus)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    routes: Routes = field(default_factory=Routes)  # POST paths on the daemon's HTTP server (leak receivers)
    cycle_hooks: list[tuple[str, CycleHook]] = field(default_factory=list)
    transition_listeners: list[TransitionListener] = field(default_factory=list)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    # one lock per key for the executors of every capability (engine.executor.Executor): actions on a key
    # run one at a time, each against the key's live state
    key_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def live_state(self, key: str) -> KeyState | None:
        return self.tracker.snapshot().get(key)

    @property
    def store(self) -> Store:
        return self.current_store()

    @property
    def inventory(self) -> Inventory:
        return self.current_inventory()

    @property
    def scheduler(self) -> AsyncIOScheduler | None:
        return self.current_scheduler()

    def on_cycle(self, name: str, hook: CycleHook) -> None:
        """Run `hook` after every probe cycle, in the order capabilities registered (see extensions.py)."""
        self.cycle_hooks.append((name, hook))

    def on_transition(self, listener: TransitionListener) -> None:
        self.transition_listeners.append(listener)

    def spawn(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Background tasks the daemon cancels at shutdown."""
        self.background.extend(tasks)

    async def emit_alert(self, alert: Alert) -> None:
        await self.alerts.emit(alert)

    async def still_leading(self) -> bool:
        """True when this instance may act now, checked against the database when others share it."""
        if self.leadership is SOLO:
            return True
        return await asyncio.to_thread(confirm_leading, self.store.session)


class Capability(Protocol):
    """What `setup(runtime)` returns: the handle the daemon closes at shutdown, in reverse start order."""

    async def aclose(self) -> None: ...
