"""A capability's periodic job follows the config across reloads (runtime.keep_interval_job): usage pulls,
scheduled scans and the rotation check all keep their job this way."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keywatch.runtime import keep_interval_job


async def test_job_added_rescheduled_on_a_new_interval_and_removed() -> None:
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    scheduler = AsyncIOScheduler()
    scheduler.start()
    try:
        keep_interval_job(scheduler, "check", job, 60)
        first = scheduler.get_job("check")
        assert first is not None and first.trigger.interval == timedelta(seconds=60)
        await asyncio.sleep(0.2)
        assert ran == [1]  # the first run is at once, not one interval later
        keep_interval_job(scheduler, "check", job, 60)  # every cycle calls it: nothing changes, no extra run
        await asyncio.sleep(0.1)
        assert ran == [1] and scheduler.get_job("check").next_run_time == first.next_run_time
        keep_interval_job(scheduler, "check", job, 5)  # a reload shortened the interval
        job_now = scheduler.get_job("check")
        assert job_now.trigger.interval == timedelta(seconds=5)
        keep_interval_job(scheduler, "check", job, None)  # the capability was switched off
        assert scheduler.get_job("check") is None
    finally:
        scheduler.shutdown(wait=False)


def test_nothing_before_the_scheduler_exists() -> None:
    async def job() -> None:
        return None

    keep_interval_job(None, "check", job, 60)  # no error: the daemon calls it again once started
