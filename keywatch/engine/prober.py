"""Probing: every key once per cycle, with bounded concurrency, never raising.

A probe that crashes, hangs or times out becomes a result (provider_error / unreachable), so one bad
adapter or provider never stops a cycle and never blames a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

import structlog

from keywatch.domain import Health, ManagedKey, ProbeResult
from keywatch.providers.clients import AdapterSet
from keywatch.providers.lean import Deadlines
from keywatch.redact import redact_text

log = structlog.get_logger("keywatch.prober")

ResultCallback = Callable[[ProbeResult], Awaitable[None] | None]


class Prober:
    def __init__(self, adapters: AdapterSet, *, concurrency: int, timeout: float) -> None:
        self.adapters = adapters
        self.concurrency = concurrency
        self.timeout = timeout
        self.deadlines = Deadlines()  # one timer for every probe in flight, not one per probe

    async def probe_one(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        try:
            adapter = self.adapters.get(key.provider)
            with self.deadlines.limit(self.timeout + 1.0):  # the net under every adapter's own timeout
                return scrubbed(await adapter.probe(key), key)
        except TimeoutError:
            return _failed(key, Health.UNREACHABLE, started, "timeout", f"no answer within {self.timeout:g}s")
        except ImportError as exc:
            return _failed(key, Health.PROVIDER_ERROR, started, "missing_dependency", str(exc))
        except Exception as exc:  # an adapter bug must not end the cycle or blame the key
            secrets = _secrets(key)
            log.warning("probe_crashed", key=key.name, provider=key.provider, error=type(exc).__name__)
            return _failed(key, Health.PROVIDER_ERROR, started, "probe_error",
                           redact_text(f"{type(exc).__name__}: {exc}"[:300], secrets))

    async def run(
        self,
        keys: Iterable[ManagedKey],
        on_result: ResultCallback | None = None,
        *,
        spread: float = 0.0,
        hurry: asyncio.Event | None = None,
        keep: bool = True,
    ) -> list[ProbeResult]:
        """Probe all `keys` with at most `concurrency` in flight; results in completion order (none kept with
        `keep` False: the daemon takes each from `on_result` and keeps none, so a cycle holds no result per key).

        With `spread` > 0 each key starts at its own offset within the first `spread` seconds (see
        `start_offsets`), so the cycle is a steady trickle instead of one burst; it ends when the last probe
        has answered, a full pass. Setting `hurry` (the daemon does at shutdown) ends the waiting: the keys
        not started yet are left for the next pass, the probes in flight finish, and the cycle ends with what
        it has, so a stop never waits out the spread."""
        keys = list(keys)
        queue: asyncio.Queue[ManagedKey] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        offsets = start_offsets([k.name for k in keys], spread) if spread > 0 and len(keys) > 1 else None
        if offsets is not None:
            order = sorted(range(len(keys)), key=offsets.__getitem__)
            starts = {id(keys[i]): t0 + offsets[i] for i in order}
            for i in order:
                queue.put_nowait(keys[i])
        else:
            starts = {}
            for k in keys:
                queue.put_nowait(k)
        results: list[ProbeResult] = []

        async def worker() -> None:
            while True:
                try:
                    key = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if starts:
                    wait = starts[id(key)] - loop.time()
                    if wait > 0:
                        if hurry is None:
                            await asyncio.sleep(wait)
                        else:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(hurry.wait(), wait)
                    if hurry is not None and hurry.is_set():
                        return
                result = await self.probe_one(key)
                if keep:
                    results.append(result)
                if on_result is not None:
                    ret = on_result(result)
                    if ret is not None:
                        await ret

        workers = min(self.concurrency, queue.qsize())
        await asyncio.gather(*(worker() for _ in range(workers)))
        return results


def start_offsets(names: list[str], spread: float) -> list[float]:
    """Seconds after a cycle's start at which each key is probed: a stable place in `[0, spread)` from a
    hash of its name (the same key keeps the same place, cycle after cycle, so each is probed about one
    interval apart), plus up to a second of fresh jitter (but never past the window), so keys that hash
    close together and daemons that start together do not meet in step."""
    out = []
    for name in names:
        place = zlib.crc32(name.encode()) / 2**32 * spread
        out.append(min(spread, place + random.random() * min(1.0, spread)))
    return out


def _secrets(key: ManagedKey) -> list[str]:
    return [s.reveal() for s in (key.secret, *key.extra_secrets.values()) if s is not None]


def scrubbed(result: ProbeResult, key: ManagedKey) -> ProbeResult:
    """The result with every text a provider chose masked, the error code too: a hostile or careless
    provider may put the key, or part of it, anywhere in its answer (`"code": "key_<secret>_denied"`)."""
    if not (result.error_code or result.error_message or result.compromise_reason):
        return result  # a healthy answer: nothing the provider wrote is kept
    secrets = _secrets(key)
    texts = {f: getattr(result, f) for f in ("error_code", "error_message", "compromise_reason")}
    clean = {f: redact_text(v, secrets) for f, v in texts.items() if v}
    changed = {f: v for f, v in clean.items() if v != texts[f]}
    return dataclasses.replace(result, **changed) if changed else result


def _failed(key: ManagedKey, health: Health, started: float, code: str, message: str) -> ProbeResult:
    return ProbeResult(
        key=key.name, provider=key.provider, health=health, checked_at=datetime.now(UTC),
        latency_ms=round((time.perf_counter() - started) * 1000, 2), error_code=code, error_message=message,
    )
