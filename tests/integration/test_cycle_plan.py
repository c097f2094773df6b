"""One cycle plan: the daemon's policy step and `keywatch policy test --json` decide through the same
`plan_cycle`, so for the same fleet and states they print the same plan."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keywatch.engine.plan import plan_rows
from keywatch.runtime import CycleReport
from tests.integration.test_policy_harness import cli, start, stop

EXTRA = """
[safety]
default_policies = "always"
disable_after_probes = 2

[[policies]]
name = "ticket-on-forbidden"
when = { health = "forbidden" }
actions = [{ type = "hook", command = ["true"] }]
"""


def comparable(rows: list[dict[str, str]]) -> list[tuple[str, str, str, str, str]]:
    return sorted((r["policy"], r["key"], r["action"], r["would"], r["reason"]) for r in rows)


async def test_daemon_and_policy_test_make_the_same_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"k{i}" for i in range(10)]
    # three dead keys of ten: the blast-radius limit (10 %, at least 2 keys) lets two be disabled, blocks one
    behaviours = {"k1": "invalid", "k2": "invalid", "k5": "invalid", "k3": "missing_scope"}
    h = await start(tmp_path, names, behaviours, extra=EXTRA)
    engine = h.daemon.capabilities["policies"]
    try:
        await asyncio.to_thread(cli, "disable", "k4", "-c", h.config_path, "--reason", "on leave", "--keywatch-only")
        seen_whys: set[str] = set()
        for cycle in range(4):
            if cycle == 3:
                h.set("k2", "healthy")  # one dead key less: the other may now be disabled
            await h.cycles(1)
            capsys.readouterr()
            assert await asyncio.to_thread(cli, "policy", "test", "-c", h.config_path, "--json") == 0
            from_cli = json.loads(capsys.readouterr().out)
            # The daemon's own policy step on the same stored states (no new probe results in between).
            await engine.on_cycle(CycleReport(datetime.now(UTC), [], [], h.daemon.inventory))
            from_daemon = plan_rows(engine.last_plan)
            assert comparable(from_cli) == comparable(from_daemon), f"cycle {cycle}"
            seen_whys |= {r["would"].split(":")[0].split(" (")[0] for r in from_daemon}
        # The scenario went through every kind of answer the plan gives.
        assert {"do", "BLOCKED", "nothing"} <= seen_whys
        assert h.admin("k1") == "disabled" and h.admin("k4") == "disabled"
    finally:
        await stop(h)
