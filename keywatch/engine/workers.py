"""Probe worker processes, for fleets one core cannot probe within the interval.

With `probe.workers = N` (N > 1) the keys are split over N child processes by a stable hash of their
name. Each child has its own event loop, connection pool (`concurrency / N` connections) and adapters,
and streams its results back; the daemon keeps the one state, store, metrics and every management
action. A worker that dies is replaced at the next cycle, and the keys it left unprobed are reported
as `provider_error` (never a verdict on the keys).

Secrets reach a worker over its pipe, a channel between two processes of the same user; they are
never written anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import signal
import time
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import structlog

from keywatch.domain import Account, Health, ManagedKey, ProbeResult, Secret
from keywatch.engine.prober import ResultCallback
from keywatch.providers.transport import MAX_BODY

log = structlog.get_logger("keywatch.workers")

BATCH = 256  # results per message: few enough messages, small enough pipe writes


# -- the inventory as plain data (Secret refuses to be pickled on purpose) ------------------------------
def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return {"__secret__": value.reveal()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__secret__"}:
            return Secret(value["__secret__"])
        return {k: _unplain(v) for k, v in value.items()}
    return value


def inventory_message(keys: Iterable[ManagedKey], accounts: dict[str, Account]) -> dict[str, Any]:
    return {
        "keys": [
            {"name": k.name, "provider": k.provider, "secret": _plain(k.secret), "secret_ref": k.secret_ref,
             "base_url": k.base_url, "probe": k.probe, "model": k.model, "labels": dict(k.labels),
             "account": k.account, "options": _plain(dict(k.options)), "extra_secrets": _plain(dict(k.extra_secrets))}
            for k in keys
        ],
        "accounts": {
            name: {"provider": a.provider, "admin_secret": _plain(a.admin_secret), "base_url": a.base_url,
                   "allow_destructive": a.allow_destructive, "options": _plain(dict(a.options))}
            for name, a in accounts.items()
        },
    }


def _keys_from(message: dict[str, Any]) -> tuple[dict[str, ManagedKey], dict[str, Account]]:
    keys = {}
    for k in message["keys"]:
        keys[k["name"]] = ManagedKey(
            name=k["name"], provider=k["provider"], secret=_unplain(k["secret"]), secret_ref=k["secret_ref"],
            base_url=k["base_url"], probe=k["probe"], model=k["model"], labels=k["labels"], account=k["account"],
            options=_unplain(k["options"]), extra_secrets=_unplain(k["extra_secrets"]),
        )
    accounts = {
        name: Account(name=name, provider=a["provider"], admin_secret=_unplain(a["admin_secret"]),
                      base_url=a["base_url"], allow_destructive=a["allow_destructive"], options=_unplain(a["options"]))
        for name, a in message["accounts"].items()
    }
    return keys, accounts


# -- the child ----------------------------------------------------------------------------------------
def worker_main(conn: Connection, settings: dict[str, Any]) -> None:
    """Entry point of a worker process."""
    # The daemon decides when workers stop (systemd signals the whole unit); a worker ends when told to
    # or when its pipe closes.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    from keywatch import aio
    from keywatch import logging as kwlog

    kwlog.setup(settings["log_format"], settings["log_level"])
    aio.run(_worker_loop(conn, settings))


async def _worker_loop(conn: Connection, settings: dict[str, Any]) -> None:
    from keywatch.engine.prober import Prober
    from keywatch.providers.clients import AdapterSet, make_http_client
    from keywatch.redact import REGISTRY

    loop = asyncio.get_running_loop()
    receiver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keywatch-worker-recv")
    http = make_http_client(settings["concurrency"], settings["timeout"], settings["max_body"])
    adapters: AdapterSet | None = None
    prober: Prober | None = None
    keys: dict[str, ManagedKey] = {}
    # One receive in flight at a time, kept across messages: a spread pass listens for "hurry" while it runs.
    incoming: asyncio.Future[Any] | None = None
    try:
        while True:
            if incoming is None:
                incoming = loop.run_in_executor(receiver, conn.recv)
            try:
                kind, payload = await incoming
            except (EOFError, OSError):
                return
            finally:
                incoming = None
            if kind == "stop":
                return
            if kind == "hurry":  # arrived after its pass ended: nothing to hurry
                continue
            if kind == "inventory":
                keys, accounts = _keys_from(payload)
                REGISTRY.replace([s.reveal() for k in keys.values() for s in [k.secret, *k.extra_secrets.values()]
                                  if s is not None])
                if adapters is not None:
                    await adapters.aclose()
                adapters = AdapterSet(http, accounts, timeout=settings["timeout"],
                                      completion_model=settings["completion_model"])
                prober = Prober(adapters, concurrency=settings["concurrency"], timeout=settings["timeout"])
            elif kind == "probe" and prober is not None:
                names, spread = payload
                batch: list[ProbeResult] = []

                def on_result(r: ProbeResult, batch: list[ProbeResult] = batch) -> None:
                    batch.append(r)
                    if len(batch) >= BATCH:
                        conn.send(("results", list(batch)))
                        batch.clear()

                hurry = asyncio.Event()
                run = asyncio.ensure_future(
                    prober.run([keys[n] for n in names if n in keys], on_result, spread=spread, hurry=hurry,
                               keep=False))
                stop = False
                while not run.done():
                    if incoming is None:
                        incoming = loop.run_in_executor(receiver, conn.recv)
                    await asyncio.wait({run, incoming}, return_when=asyncio.FIRST_COMPLETED)
                    if incoming.done():
                        try:
                            kind, _ = incoming.result()
                        except (EOFError, OSError):
                            kind = "stop"
                        incoming = None
                        if kind in ("hurry", "stop"):
                            hurry.set()
                            stop = stop or kind == "stop"
                await run
                conn.send(("results", batch))
                conn.send(("done", None))
                if stop:
                    return
    finally:
        if adapters is not None:
            await adapters.aclose()
        await http.aclose()
        receiver.shutdown(wait=False)


# -- the daemon's side --------------------------------------------------------------------------------
@dataclass
class _Worker:
    index: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    sent_inventory: int = -1
    alive: bool = True
    started_at: float = field(default_factory=time.monotonic)


class WorkerProber:
    """Same interface as Prober (`run`), spread over worker processes."""

    def __init__(self, workers: int, *, concurrency: int, timeout: float, completion_model: str,
                 max_body: int = MAX_BODY, log_format: str = "json", log_level: str = "info") -> None:
        self.count = workers
        self.timeout = timeout
        self.shape = (workers, concurrency, timeout, completion_model, max_body)
        self.settings = {
            "concurrency": max(1, concurrency // workers), "timeout": timeout, "max_body": max_body,
            "completion_model": completion_model, "log_format": log_format, "log_level": log_level,
        }
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker | None] = [None] * workers
        self._inventory: dict[str, Any] | None = None
        self._generation = 0
        self._receivers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keywatch-probe-recv")

    def set_inventory(self, keys: Iterable[ManagedKey], accounts: dict[str, Account]) -> None:
        self._inventory = inventory_message(keys, accounts)
        self._generation += 1

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=worker_main, args=(child, self.settings), daemon=True,
                                    name=f"keywatch-probe-{index}")
        process.start()
        child.close()
        log.info("probe_worker_started", worker=index, pid=process.pid)
        return _Worker(index, process, parent)

    def _ready(self, index: int) -> _Worker:
        w = self._workers[index]
        if w is None or not w.alive or not w.process.is_alive():
            if w is not None:
                self._reap(w)
            w = self._workers[index] = self._spawn(index)
        if w.sent_inventory != self._generation:
            w.conn.send(("inventory", self._inventory))
            w.sent_inventory = self._generation
        return w

    def _reap(self, w: _Worker) -> None:
        w.alive = False
        with contextlib.suppress(OSError):
            w.conn.close()
        if w.process.is_alive():
            w.process.kill()
        w.process.join(timeout=5)

    def partition(self, names: Iterable[str]) -> list[list[str]]:
        parts: list[list[str]] = [[] for _ in range(self.count)]
        for name in names:
            parts[zlib.crc32(name.encode()) % self.count].append(name)
        return parts

    async def run(
        self,
        keys: Iterable[ManagedKey],
        on_result: ResultCallback | None = None,
        *,
        spread: float = 0.0,
        hurry: asyncio.Event | None = None,
        keep: bool = True,
    ) -> list[ProbeResult]:
        """As Prober.run, the keys shared among the worker processes."""
        keys = list(keys)
        by_name = {k.name: k for k in keys}
        results: list[ProbeResult] = []
        loop = asyncio.get_running_loop()

        async def pass_hurry_on(event: asyncio.Event) -> None:
            await event.wait()
            for w in self._workers:
                if w is not None and w.alive:
                    with contextlib.suppress(OSError):
                        w.conn.send(("hurry", None))

        async def deliver(batch: list[ProbeResult]) -> None:
            for r in batch:
                if keep:
                    results.append(r)
                if on_result is not None:
                    ret = on_result(r)
                    if ret is not None:
                        await ret

        async def drive(index: int, names: list[str]) -> None:
            if not names:
                return
            pending = set(names)
            try:
                w = self._ready(index)
                w.conn.send(("probe", (names, spread)))
                while True:
                    kind, payload = await loop.run_in_executor(self._receivers, w.conn.recv)
                    if kind == "done":
                        return
                    pending.difference_update(r.key for r in payload)
                    await deliver(payload)
            except (EOFError, OSError, BrokenPipeError) as exc:
                w = self._workers[index]
                if w is not None:
                    self._reap(w)
                log.error("probe_worker_died", worker=index, unprobed=len(pending), error=type(exc).__name__)
                now = datetime.now(UTC)
                await deliver([
                    ProbeResult(key=n, provider=by_name[n].provider, health=Health.PROVIDER_ERROR, checked_at=now,
                                latency_ms=0.0, error_code="probe_worker_died",
                                error_message="the probe worker process ended before probing this key")
                    for n in sorted(pending) if n in by_name
                ])

        relay = asyncio.ensure_future(pass_hurry_on(hurry)) if hurry is not None and spread > 0 else None
        try:
            await asyncio.gather(*(drive(i, part) for i, part in enumerate(self.partition(by_name))))
        finally:
            if relay is not None:
                relay.cancel()
        return results

    async def aclose(self) -> None:
        for w in self._workers:
            if w is None:
                continue
            with contextlib.suppress(OSError):
                w.conn.send(("stop", None))
        loop = asyncio.get_running_loop()
        for w in self._workers:
            if w is None:
                continue
            await loop.run_in_executor(None, w.process.join, 10)
            self._reap(w)
        self._workers = [None] * self.count
        self._receivers.shutdown(wait=False)
