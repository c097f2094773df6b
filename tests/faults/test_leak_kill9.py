"""A real daemon killed (exit 137, as kill -9) in the middle of a containment: right after the report is
recorded (nothing else done), and right after the compromise mark is written too (the provider not called
yet). After a restart the key is contained exactly once: one deactivation call at the simulator, one
critical alert delivered, the report `matched` and the mark contained."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from keywatch.leaks.containment import FAULT_ENV
from keywatch.leaks.store import LeakStore
from tests.integration.daemon_process import wait_until
from tests.integration.leaks_fleet import LeakFleet, compromised_alerts, post
from tests.integration.test_notify_delivery import ThreadedReceiver

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("point", ["recorded", "marked"])
def test_a_kill_during_containment_loses_nothing_and_does_nothing_twice(
    sim, tmp_path: Path, point: str, figure
) -> None:
    url = f"sqlite:///{tmp_path / 'kw.db'}"
    with ThreadedReceiver() as rx:
        fleet = LeakFleet(sim, tmp_path, url, f"K9{point[:3].upper()}")
        d = fleet.add("solo", rx.url("/hook"), cluster=False)
        try:
            d.start({**fleet.env, FAULT_ENV: point})
            wait_until(d.ready, "the daemon ready")
            with contextlib.suppress(OSError):  # killed before the answer went out: recorded all the same
                post(d.port, "/api/v1/leaks", *fleet.generic("k1", "ci: job 9, line 4"))
            assert d.proc is not None and d.proc.wait(20) == 137
            assert fleet.disable_calls("k1") == 0
            store = LeakStore(create_engine(url))
            [report] = store.reports()
            assert report.key == "k1"
            assert report.state == ("queued" if point == "recorded" else "matched")
            assert set(store.compromised()) == (set() if point == "recorded" else {"k1"})
            d.start(fleet.env)
            took = wait_until(lambda: fleet.disable_calls("k1"), "k1 deactivated after the restart")
            wait_until(lambda: compromised_alerts(rx, "k1"), "the critical alert delivered")
            time.sleep(3)  # the queue read again, the start's cycle done: nothing is done twice
            assert fleet.disable_calls("k1") == 1
            assert compromised_alerts(rx, "k1") == 1
            assert not any(fleet.disable_calls(k) for k in ("k0", "k2", "k3"))
            [report] = store.reports()
            assert report.state == "matched"
            assert store.compromised()["k1"].contained_at is not None
            figure(
                "leak containment kill -9",
                f"killed after '{point}': contained {took:.1f} s after the restart, 1 provider call, 1 alert",
            )
        finally:
            fleet.stop()
