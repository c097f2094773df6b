"""The daemon's lifecycle: start, probe on a schedule, reload on SIGHUP, drain on SIGTERM.

Whatever fails at run time (a provider, the database, a hook) is logged, counted and retried; it never
ends the process. Only a bad config at start does (exit 2), because then there is nothing to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from keywatch import __version__
from keywatch.cluster.node import ClusterRefused, Node
from keywatch.cluster.store import migrating
from keywatch.domain import Alert, Event, Health, ProbeResult, Secret, Severity, Transition
from keywatch.engine.prober import Prober
from keywatch.engine.workers import WorkerProber
from keywatch.extensions import DAEMON_CAPABILITIES, EVERY_INSTANCE
from keywatch.heap import release_freed_memory, steady_heap
from keywatch.metrics import Metrics
from keywatch.providers.base import ProviderAdapter
from keywatch.providers.clients import AdapterSet, make_http_client
from keywatch.redact import REGISTRY
from keywatch.runtime import AlertBus, Capability, CycleReport, EventLog, Runtime
from keywatch.settings.loader import ConfigError, Inventory, load_inventory
from keywatch.settings.secrets import SecretError
from keywatch.settings.secrets import resolve as resolve_secret
from keywatch.state import StateTracker
from keywatch.statuspage import PageSource, StatusPage, spend_by_key
from keywatch.store.repo import Store, db_error, default_database_url, describe_url
from keywatch.store.writer import DatabaseWriter, WriteStatus
from keywatch.web import ListenError, WebServer

log = structlog.get_logger("keywatch.daemon")

# The database, as the daemon uses it. A SQLite lock held elsewhere costs a statement at most BUSY_TIMEOUT
# (then it fails and is retried by whoever made it); a cycle waits at most PERSIST_WAIT for its batch, and
# only while the writer keeps up; a write under way for STALL_AFTER makes /readyz unready.
BUSY_TIMEOUT = 3.0
PERSIST_WAIT = 1.0
STALL_AFTER = 10.0
UNWRITTEN_LISTED = 50  # transitions named one by one in the log when they cannot be written at shutdown


def sd_notify(message: str) -> bool:
    """Send one datagram to systemd's notify socket, if there is one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify_failed", error=exc.strerror)
        return False


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it with RELOADING=1."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def check_database_location(source: str, configured: str | None, url: str) -> None:
    """A SQLite database that does not exist yet must be creatable where it is: say so at start, naming the
    setting, instead of failing on the first write. The default location is created when missing. An
    existing file that cannot be written is a database outage (the daemon degrades), not a config error."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return  # Store() reports an unparseable URL
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        return
    path = Path(db)
    if not path.is_absolute():
        path = Path.cwd() / path
    folder = path.parent
    setting = "daemon.database" if configured else "daemon.database (unset: the default location)"
    if not folder.exists():
        if configured:
            raise ConfigError(source, [
                f"daemon.database: the directory {folder} does not exist; create it (writable by keywatch) "
                "or point daemon.database at an existing directory",
            ])
        try:
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(source, [
                f"{setting}: cannot create {folder}: {exc.strerror}; set daemon.database to a writable place",
            ]) from None
    if not folder.is_dir():
        return  # something else in its place: a database outage the daemon rides out (and reports), until fixed
    if path.exists():
        return  # an existing database that is read-only now is an outage: probing goes on, /readyz says why
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(source, [
            f"{setting}: keywatch cannot write in {folder} (SQLite creates {path.name} and its -wal and -shm "
            "files there); make the directory writable by keywatch or point daemon.database elsewhere",
        ])


class Daemon:
    def __init__(self, config_path: str | Path, metrics: Metrics | None = None) -> None:
        self.config_path = str(config_path)
        self.metrics = metrics or Metrics()
        self.inventory: Inventory | None = None
        self.store: Store | None = None
        self.tracker = StateTracker()
        self.capabilities: dict[str, Capability] = {}
        self.everywhere: dict[str, Capability] = {}  # extensions.EVERY_INSTANCE, whether or not it leads
        self.first_cycle_done = False
        self.db_ok = False
        self.cycles = 0
        self._db_ready = False
        self._writer: DatabaseWriter | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reload_wanted = False
        self._reloads_open = False  # SIGHUPs during start-up are kept for when it is done
        self._reloads: asyncio.Future[None] | None = None
        self._current_cycle: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # set at shutdown: a spread cycle stops waiting (Prober.run)
        self._retired: list[Any] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._progress_at = time.monotonic()  # the last sign of the scheduler's life: a cycle began, a result came
        self._stalled = False
        self._interrupted = False
        self._web: WebServer | None = None
        self._adapters: AdapterSet | None = None
        self._prober: Prober | WorkerProber | None = None
        self._stale_secret_alerts: set[str] = set()  # keys whose secret store was down at the last load
        self.cluster: Node | None = None
        self._probed: set[str] = set()  # the keys this instance probes (its share, when others share the DB)
        self._role_lock = asyncio.Lock()
        self._capability_metrics: list[Any] = []  # collectors the capabilities added (removed when they close)
        self._role_tasks: set[asyncio.Future[None]] = set()
        self.metrics.attach_state(self.tracker.snapshot)
        self.runtime = Runtime(
            tracker=self.tracker,
            registry=self.metrics.registry,
            current_store=self._the_store,
            current_inventory=self._the_inventory,
            adapter=self._adapter,
            current_scheduler=lambda: self._scheduler,
            events=EventLog(lambda: self.store, write_through=self._write_events),
        )

    def _page_source(self) -> PageSource:
        def events(limit: int) -> list[Event]:
            return self.store.events(limit=limit) if self.store is not None and self._db_ready else []

        def spend() -> dict[str, tuple[str, str]]:
            snapshot = getattr(self.capabilities.get("usage"), "snapshot", None)
            return spend_by_key(getattr(snapshot, "budgets", None) or [])

        return PageSource(keys=self.tracker.snapshot, events=events, outages=lambda: self.runtime.board.outages,
                          spend=spend)

    @staticmethod
    def _status_token(inventory: Inventory) -> Secret | None:
        ref = inventory.config.daemon.status_token
        if ref is None:
            return None
        try:
            return resolve_secret(ref, allow_literal=inventory.config.daemon.allow_literal_secrets)
        except SecretError as exc:
            raise ConfigError(inventory.source, [f"daemon.status_token: {exc}"]) from None

    def _the_store(self) -> Store:
        assert self.store is not None, "the store exists once the daemon started"
        return self.store

    def _the_inventory(self) -> Inventory:
        assert self.inventory is not None, "the inventory exists once the daemon started"
        return self.inventory

    def _adapter(self, provider: str) -> ProviderAdapter:
        assert self._adapters is not None, "adapters exist once the daemon started"
        return self._adapters.get(provider)

    # -- readiness ----------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, dict[str, bool]]:
        writer = self._writer
        status = writer.check() if writer is not None else None
        checks = {
            "config_loaded": self.inventory is not None,
            "database_reachable": self.db_ok and not (status is not None and status.lost),
            "database_writable": status is not None and status.ok and not writer.stalled(STALL_AFTER),
            "first_cycle_done": self.first_cycle_done,
        }
        if self.cluster is not None and self.cluster.clustered:
            checks["cluster_heartbeat"] = self.cluster.ready()
        ok = all(checks.values())
        self.metrics.ready.set(1 if ok else 0)
        return ok, checks

    @property
    def web_port(self) -> int | None:
        return self._web.bound_port if self._web else None

    # -- lifecycle ----------------------------------------------------------------------------------
    def load(self, *, alert_sinks: bool = True) -> Inventory:
        inventory = load_inventory(self.config_path, alert_sinks=alert_sinks)
        release_freed_memory()  # parsing and validating thousands of [[keys]] peaks well above what is kept
        for w in inventory.warnings:
            log.warning("config_warning", problem=w)
        return inventory

    def _use_inventory(self, inventory: Inventory) -> None:
        # Add, never replace: secrets held by extensions (alert sinks) and those of keys just removed stay masked.
        REGISTRY.add(inventory.secrets())
        probe = inventory.config.probe
        old = (self._adapters, self._adapters.http if self._adapters else None)
        http = make_http_client(probe.concurrency, probe.timeout, probe.max_body)
        self._adapters = AdapterSet(http, inventory.accounts, timeout=probe.timeout,
                                    completion_model=probe.completion_model)
        if old[0] is not None:
            self._retired.append(old)
        self._prober = self._make_prober(inventory)
        self.inventory = inventory
        self.tracker.sync_inventory(inventory.keys)
        self.metrics.set_per_key(inventory.config.daemon.metrics_per_key)
        self.metrics.keys.clear()
        for provider in {k.provider for k in inventory.keys}:
            self.metrics.keys.labels(provider).set(sum(1 for k in inventory.keys if k.provider == provider))

    def _make_prober(self, inventory: Inventory) -> Prober | WorkerProber:
        """In-process probing, or worker processes when `probe.workers` > 1 (kept across reloads that do
        not change how they are built: a reload then only hands them the new inventory)."""
        probe, daemon = inventory.config.probe, inventory.config.daemon
        assert self._adapters is not None
        if probe.workers <= 1:
            if isinstance(self._prober, WorkerProber):
                self._retired.append(self._prober)
            return Prober(self._adapters, concurrency=probe.concurrency, timeout=probe.timeout)
        shape = (probe.workers, probe.concurrency, probe.timeout, probe.completion_model, probe.max_body)
        current = self._prober
        if not (isinstance(current, WorkerProber) and current.shape == shape):
            if isinstance(current, WorkerProber):
                self._retired.append(current)
            current = WorkerProber(probe.workers, concurrency=probe.concurrency, timeout=probe.timeout,
                                   completion_model=probe.completion_model, max_body=probe.max_body,
                                   log_format="json" if daemon.log_format == "auto" else daemon.log_format,
                                   log_level=daemon.log_level)
        current.set_inventory(inventory.keys, inventory.accounts)
        return current

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for item in retired:
            if isinstance(item, WorkerProber):
                await item.aclose()
                continue
            adapters, http = item
            await adapters.aclose()
            await http.aclose()

    async def start(self) -> None:
        """Everything up to the first scheduled cycle. Raises ConfigError for a bad config, or for an address
        it cannot listen on, before any side effect (no database file, no migration, no worker process)."""
        steady_heap()  # before the config's parsing, the first to free large blocks
        inventory = self.load()  # every check that can be made without side effects, as `config validate`
        configured_db = inventory.config.daemon.database
        check_database_location(inventory.source, configured_db, configured_db or default_database_url())
        listen = inventory.config.daemon.listen
        web = WebServer(listen, self.metrics.exposition_chunks, self.readiness, routes=self.runtime.routes)
        web.add_status_page(StatusPage(self._page_source()), self._status_token(inventory))
        try:
            await web.start()  # before the database: /healthz answers while a slow database connects
        except ListenError as exc:
            raise ConfigError(inventory.source, [
                f"daemon.listen: {exc}; stop what uses it or set another host:port in daemon.listen",
            ]) from None
        self._web = web
        self.cluster = Node(inventory.config.cluster, self.metrics.registry)
        try:  # a second instance on one SQLite file is refused before it touches the database
            self.cluster.lock_sqlite(configured_db or default_database_url())
        except ClusterRefused as exc:
            await web.stop()
            raise ConfigError(inventory.source, [str(exc)]) from None
        self._use_inventory(inventory)
        url = inventory.config.daemon.database or default_database_url()
        self.store = Store(url, busy_timeout=BUSY_TIMEOUT)
        await self._ensure_db()
        self._writer = DatabaseWriter(self.store, on_status=self._db_status, on_drop=self._db_dropped,
                                      prepare=self._prepare_db)
        self._writer.start()
        try:
            await self.cluster.join(self.store, self._leadership_changed)
        except ClusterRefused as exc:
            raise ConfigError(inventory.source, [str(exc)]) from None
        self.runtime.leadership = self.cluster.leadership
        web.details = self.cluster.details
        if self.cluster.clustered and inventory.config.cluster.metrics == "share":
            self.metrics.attach_state(self._shown_states)
        for name, module_name in EVERY_INSTANCE:
            self.everywhere[name] = await importlib.import_module(module_name).serve(self.runtime)
        if self.runtime.leadership.leading:  # a follower starts them when it takes over
            await self._setup_extensions()
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        probe = inventory.config.probe
        self._scheduler.add_job(
            self._scheduled_cycle, self._trigger(probe.interval, probe.jitter), id="probe",
            next_run_time=datetime.now(UTC), max_instances=1, coalesce=True, misfire_grace_time=int(probe.interval),
        )
        self._scheduler.start()
        # The inventory, config and clients live as long as the process: keep them out of the cyclic
        # collector's full passes, which otherwise rescan them during every busy cycle.
        gc.collect()
        gc.freeze()
        release_freed_memory()
        self.runtime.events.record(Event(datetime.now(UTC), "daemon_started", None, "keywatch",
                                          f"keywatch {__version__} started with {len(inventory.keys)} keys"))
        log.info("started", version=__version__, keys=len(inventory.keys), listen=f"{self._web.host}:{self.web_port}",
                 database=describe_url(url), interval_s=probe.interval, concurrency=probe.concurrency)

    async def _setup_extensions(self) -> None:
        import importlib

        before = set(self.metrics.registry._collector_to_names)
        for name, module_name in DAEMON_CAPABILITIES:
            module = importlib.import_module(module_name)
            self.capabilities[name] = await module.setup(self.runtime)
        self._capability_metrics = [c for c in self.metrics.registry._collector_to_names if c not in before]

    def _shown_states(self) -> dict[str, Any]:
        """`cluster.metrics = "share"`: a follower's /metrics shows the keys it probes; the leader, which
        decides on the whole fleet, shows them all."""
        states = self.tracker.snapshot()
        if self.runtime.leadership.leading:
            return states
        probed = self._probed
        return {name: st for name, st in states.items() if name in probed}

    async def _close_extensions(self) -> None:
        """Close the capabilities (in reverse order) and forget what they registered, so they can start
        again (an instance that loses the lead and later takes it back)."""
        for name, capability in reversed(list(self.capabilities.items())):
            try:
                await capability.aclose()
            except Exception:
                log.exception("capability_close_failed", capability=name)
        self.capabilities.clear()
        self.runtime.cycle_hooks.clear()
        self.runtime.transition_listeners.clear()
        for task in self.runtime.background:
            task.cancel()
        self.runtime.background.clear()
        self.runtime.alerts = AlertBus()
        for collector in self._capability_metrics:
            with contextlib.suppress(KeyError):
                self.metrics.registry.unregister(collector)
        self._capability_metrics = []
        if self._scheduler is not None:
            for job in self._scheduler.get_jobs():
                if job.id != "probe":
                    job.remove()

    def _leadership_changed(self, leading: bool) -> None:
        """From the heartbeat (on the loop): start the capabilities on taking the lead, close them on losing
        it. Started fresh, they read the durable state (outbox, alert states, rotations) the last leader left."""
        if self._stop.is_set():
            return
        task = asyncio.ensure_future(self._switch_role())
        self._role_tasks.add(task)
        task.add_done_callback(self._role_tasks.discard)

    async def _switch_role(self) -> None:
        async with self._role_lock:
            if self._stop.is_set() or self._scheduler is None:
                return
            leading = self.runtime.leadership.leading
            try:
                if leading and not self.capabilities:
                    log.info("acting", instance=self.runtime.leadership.instance, role="leader")
                    await self._setup_extensions()
                elif not leading and self.capabilities:
                    log.info("acting_stopped", instance=self.runtime.leadership.instance, role="follower")
                    await self._close_extensions()
            except Exception:
                log.exception("role_switch_failed", leading=leading)

    async def _secret_store_alerts(self, inventory: Inventory) -> None:
        """A key whose secret store was down at this load runs on its cached value: say so once, and resolve
        the alert at the first load that reads the store again."""
        now = datetime.now(UTC)
        for name, why in inventory.stale_secrets.items():
            log.warning("secret_store_unavailable", key=name, problem=why)
            await self.emit_alert(Alert(
                f"secret_store:{name}", Severity.WARNING, True, f"Secret store unreachable for key {name}",
                f"{why}; keywatch keeps the value it read before and reads the store again at the next reload",
                now, key=name))
        for name in sorted(self._stale_secret_alerts - set(inventory.stale_secrets)):
            await self.emit_alert(Alert(
                f"secret_store:{name}", Severity.WARNING, False, f"Secret store reachable again for key {name}",
                "the key's secret was read from its store again", now, key=name))
        self._stale_secret_alerts = set(inventory.stale_secrets)

    async def emit_alert(self, alert: Alert) -> None:
        """Raise or resolve an alert; never raises (a sink outage must not stop detection)."""
        await self.runtime.alerts.emit(alert)

    @property
    def scheduler(self) -> AsyncIOScheduler | None:
        return self._scheduler

    @staticmethod
    def _trigger(interval: float, jitter: float) -> IntervalTrigger:
        return IntervalTrigger(seconds=interval, jitter=int(interval * jitter) or None, timezone=UTC)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # Handlers first: a SIGTERM during start-up still ends in an orderly stop, a SIGHUP reloads once
        # start-up is done (instead of killing the process).
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self._interrupt)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.start()
        except ConfigError as exc:
            for p in exc.problems:
                log.error("config_error", file=exc.source, problem=p)
            return 2
        self._reloads_open = True
        if self._reload_wanted:
            self.request_reload()
        self._progress()
        watchdog = asyncio.create_task(self._watchdog())
        sd_notify(f"READY=1\nSTATUS=probing {len(self.inventory.keys) if self.inventory else 0} keys")
        await self._stop.wait()
        sd_notify("STOPPING=1")
        log.info("stopping", reason="signal")
        if self._reloads is not None and not self._reloads.done():
            await asyncio.wait({self._reloads}, timeout=30)  # a reload under way finishes, none starts
        await self.shutdown()
        watchdog.cancel()
        log.info("stopped")
        return 130 if self._interrupted else 0  # Ctrl-C: the CLI's "interrupted", after the same orderly stop

    def request_stop(self) -> None:
        self._stop.set()

    def _interrupt(self) -> None:
        self._interrupted = True
        self.request_stop()

    def request_reload(self) -> None:
        """SIGHUP. Reloads run one at a time; signals arriving during a reload schedule exactly one more,
        which reads the file when it starts: the last signal wins, however fast they come."""
        self._reload_wanted = True
        if self._reloads_open and (self._reloads is None or self._reloads.done()):
            self._reloads = asyncio.ensure_future(self._reload_until_current())

    async def _reload_until_current(self) -> None:
        while self._reload_wanted and not self._stop.is_set():
            self._reload_wanted = False
            try:
                await self.reload()
            except Exception:
                log.exception("reload_failed")

    async def shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.pause()  # no new cycle; shutdown() would cancel the running one, so it comes last
        self._hurry.set()  # a spread cycle stops waiting: the keys not probed yet wait for the next start
        current = self._current_cycle
        if current is not None and not current.done():
            grace = (self.inventory.config.probe.timeout if self.inventory else 10) + 15
            try:
                await asyncio.wait_for(asyncio.shield(current), timeout=grace)
            except TimeoutError:
                log.warning("drain_timeout", waited_s=grace)
                current.cancel()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        async with self._role_lock:
            for name, capability in reversed(list(self.capabilities.items())):
                try:
                    await capability.aclose()
                except Exception:
                    log.exception("capability_close_failed", capability=name)
            for name, part in reversed(list(self.everywhere.items())):
                try:
                    await part.aclose()
                except Exception:
                    log.exception("capability_close_failed", capability=name)
        await self._persist([])  # after the capabilities: what they record while closing is written too
        await self._close_writer()
        if self.cluster is not None:
            await self.cluster.close()
        for task in self.runtime.background:
            task.cancel()
        if self._web is not None:
            await self._web.stop()
        if self._adapters is not None:
            self._retired.append((self._adapters, self._adapters.http))
            self._adapters = None
        if isinstance(self._prober, WorkerProber):
            self._retired.append(self._prober)
            self._prober = None
        await self._close_retired()
        if self.store is not None:
            self.store.dispose()

    def stall_limit(self) -> float:
        """How long the scheduler may show no progress (no cycle started, no probe result) before the watchdog
        stops being pinged: the longest wait between two cycles, plus a probe's timeout twice, plus a minute."""
        if self.inventory is None:
            return 300.0
        probe = self.inventory.config.probe
        return probe.interval * (1 + probe.jitter) + 2 * probe.timeout + 60.0

    def _progress(self) -> None:
        self._progress_at = time.monotonic()
        if self._stalled:
            self._stalled = False
            log.info("scheduler_progressing")

    def making_progress(self) -> bool:
        """False once the scheduler showed no progress for longer than stall_limit (logged once)."""
        stuck_for = time.monotonic() - self._progress_at
        if stuck_for <= self.stall_limit():
            return True
        if not self._stalled:
            self._stalled = True
            log.error("scheduler_stalled", stuck_s=round(stuck_for), limit_s=round(self.stall_limit()),
                      hint="no probe cycle made progress; the systemd watchdog is no longer pinged, so systemd "
                           "restarts keywatch")
        return False

    async def _watchdog(self) -> None:
        """WATCHDOG=1 at half of WatchdogSec, only while the scheduler makes progress: a hung event loop sends
        nothing, and a loop that runs but whose cycles are stuck stops sending, so systemd restarts both."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return
        period = int(usec) / 2 / 1_000_000
        while True:
            if self.making_progress():
                sd_notify("WATCHDOG=1")
            await asyncio.sleep(period)

    async def reload(self) -> bool:
        """SIGHUP: take the new config, or keep the running one and say why. One reload at a time: the file
        is read and applied under the lock, so an older read can never be applied after a newer one."""
        async with self._reload_lock:
            # systemd holds `systemctl reload` until READY=1 (Type=notify with RELOADING=1, systemd 253+).
            sd_notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}\nSTATUS=reloading {self.config_path}")
            try:
                applied = await self._reload()
            finally:
                keys = len(self.inventory.keys) if self.inventory else 0
                sd_notify(f"READY=1\nSTATUS=probing {keys} keys")
            return applied

    async def _reload(self) -> bool:
        log.info("reloading", file=self.config_path)
        try:
            inventory = await asyncio.to_thread(self.load, alert_sinks=False)
        except ConfigError as exc:
            for p in exc.problems:
                log.error("reload_refused", file=exc.source, problem=p)
            self.metrics.config_reloads.labels("refused").inc()
            return False
        except Exception as exc:
            log.error("reload_refused", file=self.config_path, problem=f"{type(exc).__name__}: {exc}")
            self.metrics.config_reloads.labels("refused").inc()
            return False
        old = self.inventory
        if old and old.config.daemon.listen != inventory.config.daemon.listen:
            log.warning("restart_needed", setting="daemon.listen", running=old.config.daemon.listen)
        if old and (old.config.daemon.database or "") != (inventory.config.daemon.database or ""):
            log.warning("restart_needed", setting="daemon.database")
        self._use_inventory(inventory)
        await self._secret_store_alerts(inventory)
        probe = inventory.config.probe
        if self._scheduler is not None:
            self._scheduler.reschedule_job("probe", trigger=self._trigger(probe.interval, probe.jitter))
        self.metrics.config_reloads.labels("applied").inc()
        self.runtime.events.record(Event(datetime.now(UTC), "config_reloaded", None, "keywatch",
                                          f"config reloaded: {len(inventory.keys)} keys"))
        log.info("reloaded", keys=len(inventory.keys))
        if self._current_cycle is None or self._current_cycle.done():
            await self._close_retired()
        return True

    # -- cycles ------------------------------------------------------------------------------------
    async def _scheduled_cycle(self) -> None:
        if self._stop.is_set():
            return
        self._current_cycle = asyncio.current_task()
        self._progress()
        try:
            await self.cycle()
        except Exception:
            log.exception("cycle_failed")
        finally:
            self._current_cycle = None

    async def cycle(self) -> CycleReport:
        assert self.inventory is not None and self._prober is not None
        inventory, prober = self.inventory, self._prober
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        transitions: list[Transition] = []
        probed: list[str] = []
        compromised: list[ProbeResult] = []

        def on_result(r: ProbeResult) -> None:
            probed.append(r.key)
            if r.compromised:
                compromised.append(r)
            self._progress()
            self.metrics.observe_probe(r.provider, str(r.health), r.latency_ms / 1000)
            t = self.tracker.apply(r)
            if t is not None:
                transitions.append(t)
                self.metrics.transitions.labels(t.provider, str(t.new)).inc()
                # A key found healthy at its first probe is not news (at thousands of keys, start-up
                # would flood the journal); every other change is.
                first_and_fine = t.old is Health.UNKNOWN and t.new.is_up
                (log.debug if first_and_fine else log.info)(
                    "health_changed", key=t.key, provider=t.provider, old=str(t.old), new=str(t.new),
                    http_status=t.http_status, error_code=t.error_code, error=t.error_message)
                for listener in self.runtime.transition_listeners:
                    try:
                        listener(t)
                    except Exception:
                        log.exception("transition_listener_failed")

        # Spread over part of the interval, except the first pass after start: readiness and the first
        # picture of the fleet come as fast as the fleet answers.
        probe = inventory.config.probe
        spread = probe.spread * probe.interval if self.cycles else 0.0
        keys = self.cluster.share(inventory.keys) if self.cluster is not None else inventory.keys
        if self.cluster is not None and self.cluster.clustered:  # alone, every key is its own: no set of names
            self._probed = {k.name for k in keys}
        # The others' keys, as they wrote them (the leader decides on the whole fleet): read while this
        # instance probes its own, so the read adds nothing to the cycle's length.
        fleet = None
        if self.cluster is not None and self.cluster.wants_fleet() and self._db_ready:
            fleet = asyncio.ensure_future(asyncio.to_thread(self.cluster.adopt_fleet, self.tracker, self.store,
                                                            self._probed))
        await prober.run(keys, on_result, spread=spread, hurry=self._hurry, keep=False)
        if fleet is not None:
            try:
                await fleet
            except Exception as exc:
                log.warning("fleet_state_unavailable", error=db_error(exc))
        report = CycleReport(started_at, probed, transitions, inventory, compromised)
        hooks = list(self.runtime.cycle_hooks) if self.runtime.leadership.leading else []
        for name, hook in hooks:
            try:
                await hook(report)
            except Exception:
                log.exception("cycle_hook_failed", hook=name)
        await self._persist(transitions)
        release_freed_memory()
        report.duration_s = time.perf_counter() - t0
        self.metrics.cycle_duration.set(report.duration_s)
        self.metrics.last_cycle.set(time.time())
        self.cycles += 1
        self._progress()
        self.first_cycle_done = True
        self.readiness()
        log.info("cycle_done", keys=len(probed), changes=len(transitions), seconds=round(report.duration_s, 3))
        await self._close_retired()
        return report

    def record(self, event: Event) -> None:
        """Queue an audit event; it is written with the next cycle's batch (or at shutdown)."""
        self.runtime.events.record(event)

    async def _ensure_db(self) -> bool:
        """Migrate and load the stored states (at start; the writer tries again before its writes while
        this has not worked)."""
        if self._db_ready:
            return True
        assert self.store is not None
        try:
            await asyncio.to_thread(self._prepare_db)
        except Exception as exc:
            self.db_ok = False
            self.metrics.db_up.set(0)
            log.error("database_unavailable", database=describe_url(self.store.url), error=db_error(exc))
            return False
        return True

    def _prepare_db(self) -> None:
        """Blocking; raises when the database cannot be used yet. Once it worked, the SQLite file is pinned:
        a running daemon never creates it again (a restart does, which is normal)."""
        if self._db_ready:
            return
        assert self.store is not None
        with migrating(self.store.engine):  # instances starting together migrate one at a time
            applied = self.store.upgrade_apart()  # alembic never loads into the daemon
        stored = self.store.load_states()
        self.store.pin_file()
        if applied:
            log.info("migrated", revisions=applied)
        self._merge_stored(stored)
        self._db_ready = self.db_ok = True
        self.metrics.db_up.set(1)

    def _merge_stored(self, stored: dict[str, Any]) -> None:
        """Keep what the database knew about keys still in the inventory (health, admin decisions)."""
        from dataclasses import replace

        current = self.tracker.snapshot()
        for name, st in stored.items():
            cur = current.get(name)
            if cur is None or cur.fingerprint != st.fingerprint:
                continue
            if cur.last_probe_at is None:
                self.tracker.set(replace(st, labels=cur.labels, masked=cur.masked))

    # -- persistence: the writer thread writes, in order; a cycle never waits on a database that is behind --
    async def _persist(self, transitions: list[Transition]) -> None:
        states, rollups = self.tracker.drain()
        if self.cluster is not None and self.cluster.clustered:
            states = [st for st in states if st.key in self._probed]  # the others write their own keys
        events = self.runtime.events.take()
        if self._writer is None:  # not started: keep it for when it is
            self.tracker.restore(states, rollups)
            self.runtime.events.put_back(events)
            return
        await self._submit(states=states, transitions=transitions, rollups=rollups, events=events)

    async def _write_events(self, events: list[Event]) -> None:
        """EventLog.write: through the writer, so the line is stored before the caller goes on, unless the
        database is behind (then it is queued, in order, and the caller does not wait)."""
        if self._writer is None:
            self.runtime.events.pending.extend(events)
            return
        await self._submit(events=events)

    async def _submit(self, **batch: Any) -> None:
        writer = self._writer
        assert writer is not None
        fut = writer.submit(**batch, wait=writer.caught_up)
        self._show_pending()
        if fut is not None:
            await asyncio.wait([asyncio.wrap_future(fut)], timeout=PERSIST_WAIT)

    def _show_pending(self) -> None:
        if self._writer is not None:
            for kind, n in self._writer.pending().items():
                self.metrics.db_pending.labels(kind).set(n)

    def _db_status(self, status: WriteStatus) -> None:
        """From the writer thread, when the outcome of its writes changes."""
        assert self.store is not None
        self.metrics.db_up.set(1 if status.ok else 0)
        self._show_pending()
        database = describe_url(self.store.url)
        if status.ok:
            self.db_ok = self._db_ready
            log.info("database_recovered", database=database)
        elif status.lost:
            self.db_ok = False
            log.error("database_lost", setting="daemon.database", database=database, error=status.error,
                      pending=self._writer.pending() if self._writer else None,
                      hint="the database file was removed or replaced under the running daemon; nothing is "
                           "written until it is back (keywatch does not start over with an empty one). Restore "
                           "it, or restart keywatch to begin a new database")
        else:
            log.error("database_write_failed", database=database, error=status.error,
                      pending=self._writer.pending() if self._writer else None,
                      hint="probing goes on; what could not be written is kept and written when it can be")

    def _db_dropped(self, kind: str, n: int) -> None:
        self.metrics.db_dropped.labels(kind).inc(n)
        log.warning("database_queue_full", kind=kind, dropped=n)

    async def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        counts, transitions = await asyncio.to_thread(writer.close, BUSY_TIMEOUT + PERSIST_WAIT + 5)
        if not any(counts.values()):
            return
        assert self.store is not None
        for kind, n in counts.items():
            if n:
                self.metrics.db_dropped.labels(kind).inc(n)
        log.error("database_unwritten_at_stop", database=describe_url(self.store.url), **counts,
                  error=writer.status.error,
                  hint="the database could not be written before the daemon stopped; these are not stored")
        for t in transitions[-UNWRITTEN_LISTED:]:
            log.error("transition_unwritten", key=t.key, provider=t.provider, old=str(t.old), new=str(t.new),
                      at=t.at.isoformat(), http_status=t.http_status, error_code=t.error_code)


