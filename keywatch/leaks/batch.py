"""Writes of concurrent reports and containments in shared transactions.

A burst of reports (a repository's secrets found at once) is a burst of small writes: the report rows,
the compromise marks, the actions' start lines. On SQLite each transaction takes the one write lock in
turn, and the provider calls waited behind the queue. `Batcher.run` hands a write (a function of a
session) to one drain; what arrives while a transaction runs goes into the next one, so a burst of a
hundred is a few transactions. A transaction that fails is tried again one write at a time, so one bad
write (a replayed delivery id) fails alone, with its own error. Urgent writes (an action's start line,
which its provider call waits for) go first, in a transaction of their own, ahead of the marks and rows
that nothing waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

Write = Callable[[Session], Any]


class Batcher:
    def __init__(self, run_batch: Callable[[list[Write]], list[Any]]) -> None:
        self._run_batch = run_batch  # blocking: the writes' results (or exceptions), in order
        self._pending: list[tuple[Write, asyncio.Future[Any]]] = []
        self._urgent: list[tuple[Write, asyncio.Future[Any]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def run(self, write: Write, *, urgent: bool = False) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._pending).append((write, fut))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_task(self._drain_all())
        return await fut

    async def _drain_all(self) -> None:
        while self._urgent or self._pending:
            if self._urgent:
                batch, self._urgent = self._urgent, []
            else:
                batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._run_batch, [w for w, _ in batch])
            except BaseException as exc:  # cancelled, or the store itself broke: every waiter is told
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("write cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, fut), r in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)
