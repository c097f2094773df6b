"""Concurrent leak writes share transactions (leaks.batch): a burst is a few transactions, one write that
fails (a replayed delivery id) fails alone with its own error, and the others are kept."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from keywatch.leaks.batch import Batcher
from keywatch.leaks.store import LeakReport, LeakStore, receive_in, save_report_in
from keywatch.store.repo import Store


def report(i: int) -> LeakReport:
    return LeakReport(f"r{i:04d}", datetime.now(UTC), "github", "queued", "exact", f"acme/shop alert #{i}")


async def test_a_burst_is_few_transactions_and_a_replay_fails_alone(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'kw.db'}")
    store.upgrade()
    leaks = LeakStore(store.engine)
    batches: list[int] = []

    def run_batch(writes):
        batches.append(len(writes))
        return leaks.run_batch(writes)

    b = Batcher(run_batch)
    writes = [b.run(partial(receive_in, source="github", delivery=f"d{i}", report=report(i))) for i in range(50)]
    writes.append(b.run(partial(receive_in, source="github", delivery="d7", report=report(99))))  # a replay
    writes += [b.run(partial(save_report_in, r=report(100 + i))) for i in range(50)]
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [50]
    assert isinstance(results[50], IntegrityError)
    assert len(batches) <= 3 and sum(batches) >= 101  # the failing batch was tried again one by one
    ids = {r.id for r in leaks.reports()}
    assert len(ids) == 100 and "r0099" not in ids


async def test_urgent_writes_go_ahead_of_the_others(tmp_path: Path) -> None:
    order: list[str] = []
    b = Batcher(lambda writes: [w(None) for w in writes])
    first = asyncio.ensure_future(b.run(lambda s: order.append("first")))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the drain took it: what comes now waits for the next transaction
    rest = [asyncio.ensure_future(b.run(lambda s: order.append("row"))) for _ in range(3)]
    start = asyncio.ensure_future(b.run(lambda s: order.append("start"), urgent=True))
    await asyncio.gather(first, *rest, start)
    assert order == ["first", "start", "row", "row", "row"]


async def test_a_store_that_fails_tells_every_waiter() -> None:
    def broken(writes):
        raise OSError("disk gone")

    b = Batcher(broken)
    results = await asyncio.gather(b.run(lambda s: None), b.run(lambda s: None), return_exceptions=True)
    assert [type(r) for r in results] == [OSError, OSError]
    with pytest.raises(OSError):  # and the next write is tried again (a new drain)
        await b.run(lambda s: None)
