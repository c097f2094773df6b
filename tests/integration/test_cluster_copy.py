"""`keywatch db copy`: a SQLite state moved into PostgreSQL, and back, reads the same through the CLI
(`status`, `events`, `usage`, `rotations`), and a target holding state is refused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from keywatch.domain import Event, Health, KeyState, ManagedKey, Rollup, Secret, Transition
from tests.integration.conftest import fresh_database

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


def fill(url: str) -> None:
    """A state as a daemon leaves it: keys, changes, rollups, events, alerts and outbox, usage, a rotation."""
    from keywatch.notify.outbox import AlertDB, AlertState
    from keywatch.rotation.machine import new_rotation
    from keywatch.rotation.store import RotationStore
    from keywatch.store.repo import Store
    from keywatch.usage.rows import PullResult, Replace, UsageRow
    from keywatch.usage.store import UsageStore

    store = Store(url)
    store.upgrade()
    now = datetime.now(UTC).replace(microsecond=123456)
    hour = now.replace(minute=0, second=0, microsecond=0)
    states = [
        KeyState(
            key=f"k{i}",
            provider="openai",
            fingerprint=f"sha256:{i:012d}",
            masked=f"sk-...{i:04d}",
            health=Health.INVALID if i == 2 else Health.HEALTHY,
            health_since=now - timedelta(hours=i),
            last_probe_at=now,
            consecutive=i + 1,
            http_status=401 if i == 2 else 200,
            error_code="invalid_api_key" if i == 2 else None,
            latency_ms=12.5 * i,
            labels={"team": f"t{i % 2}"},
        )
        for i in range(4)
    ]
    transitions = [Transition("k2", "openai", Health.HEALTHY, Health.INVALID, now, 401, "invalid_api_key", "bad")]
    rollups = [Rollup(f"k{i}", hour, "healthy", 10 + i, 100.0 * i, 30.0) for i in range(4)]
    events = [
        Event(
            now - timedelta(seconds=i),
            "action_done",
            "k2",
            "policy:default-disable-invalid",
            f"disable k2: done {i}",
            {"action": "disable", "result": "ok", "n": i},
        )
        for i in range(5)
    ]
    store.write_batch(states, transitions, rollups, events)
    db = AlertDB(store.session)
    alert = {"identity": "key_health:k2", "firing": True, "title": "k2 invalid"}
    db.commit(
        [AlertState("key_health:k2", True, True, "critical", now, now, [now], alert, now)],
        [("hook", {"alerts": [alert]}), ("slack", {"alerts": [alert]})],
        now,
    )
    rows = [
        UsageRow(
            "acct",
            "openai",
            "usage",
            f"key:k{i}",
            "1h",
            hour - timedelta(hours=h),
            model="gpt-4o",
            input_tokens=100 * i + h,
            output_tokens=7 * h,
            requests=h,
            cost=Decimal("0.000123") * (i + h),
        )
        for i in range(3)
        for h in range(5)
    ]
    UsageStore(store.engine).apply(
        PullResult(
            "acct",
            "openai",
            rows=rows,
            replaces=[Replace("acct", "usage", "1h", hour - timedelta(days=1), hour + timedelta(hours=1))],
        ),
        now,
    )
    key = ManagedKey("k1", "openai", Secret("sk-proj-" + "x" * 40), "env:K1", options={"publish": ["file:/x"]})
    RotationStore(store.engine).save(new_rotation(key, "create", actor="timer", reason="due", at=now))
    store.dispose()


def cli(*args: str, config: Path) -> str:
    """One CLI command, in this process (the same entry point as the `keywatch` script)."""
    import contextlib
    import io

    from keywatch.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "-c", str(config)])
    assert code in (0, 1), out.getvalue()
    return out.getvalue()


def config_for(tmp_path: Path, name: str, url: str) -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(
        f'[daemon]\ndatabase = "{url}"\n\n[[keys]]\nname = "k0"\nprovider = "openai"\nsecret = "env:NONE"\n'
        "enabled = false\n"
    )
    return p


VIEWS = [
    ("status", "--json"),
    ("events", "--json", "--since", "30d"),
    ("events", "--since", "30d"),
    ("usage", "--json", "--since", "2020-01-01"),
    ("usage", "--since", "2020-01-01", "--by", "model"),
    ("rotations", "--json"),
]


def views(config: Path) -> list[str]:
    return [cli(*v, config=config) for v in VIEWS]


def copy(src: str, dst: str) -> subprocess.CompletedProcess[str]:
    """`keywatch db copy`, in this process."""
    import contextlib
    import io

    from keywatch.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["db", "copy", "--from", src, "--to", dst])
    return subprocess.CompletedProcess(["keywatch", "db", "copy"], code, out.getvalue(), err.getvalue())


def test_db_copy_round_trip_reads_the_same(tmp_path: Path, pg_url: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    back = f"sqlite:///{tmp_path / 'back.db'}"
    fill(src)
    first = copy(src, pg_url)
    assert first.returncode == 0, first.stderr
    assert "events: 5" in first.stdout and "usage_rollups: 15" in first.stdout and "rotations: 1" in first.stdout
    second = copy(pg_url, back)
    assert second.returncode == 0, second.stderr
    original = views(config_for(tmp_path, "src", src))
    assert json.loads(original[0]) and json.loads(original[1]) and json.loads(original[3])  # not empty views
    assert views(config_for(tmp_path, "pg", pg_url)) == original
    assert views(config_for(tmp_path, "back", back)) == original
    # Ids go on after the copied ones: the next event PostgreSQL stores is not refused as a duplicate.
    from keywatch.store.repo import Store

    store = Store(pg_url)
    try:
        store.record_events([Event(datetime.now(UTC), "daemon_started", None, "keywatch", "after the copy")])
        assert len(store.events(limit=100)) == 6
    finally:
        store.dispose()


def test_db_copy_refuses_a_target_with_state(tmp_path: Path, pg_url: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    fill(src)
    assert copy(src, pg_url).returncode == 0
    again = copy(src, pg_url)
    assert again.returncode == 2
    assert "already holds keywatch state" in again.stderr and "key_state" in again.stderr
    missing = copy(f"sqlite:///{tmp_path / 'nope.db'}", pg_url)
    assert missing.returncode == 2 and "--from: no database at" in missing.stderr
    assert not (tmp_path / "nope.db").exists()
