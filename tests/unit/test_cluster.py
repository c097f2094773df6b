"""The cluster's pure parts: rendezvous sharding, the [cluster] section, the SQLite instance lock."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from keywatch.cluster.lockfile import AlreadyRunning, InstanceLock
from keywatch.cluster.shard import owner, share
from keywatch.settings.schema import Config

KEYS = [f"key-{i:05d}" for i in range(3000)]


def test_every_key_has_exactly_one_owner_and_the_shares_are_even() -> None:
    members = ["kw-a", "kw-b", "kw-c"]
    shares = {m: share(KEYS, members, m) for m in members}
    assert sum(len(s) for s in shares.values()) == len(KEYS)
    assert set().union(*shares.values()) == set(KEYS)
    for s in shares.values():
        assert abs(len(s) - len(KEYS) / 3) < len(KEYS) * 0.05


def test_a_member_leaving_moves_only_its_own_keys_and_one_joining_takes_only_its_share() -> None:
    before = {k: owner(k, ["kw-a", "kw-b", "kw-c"]) for k in KEYS}
    after = {k: owner(k, ["kw-a", "kw-c"]) for k in KEYS}
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "kw-b"}
    joined = {k: owner(k, ["kw-a", "kw-b", "kw-c", "kw-d"]) for k in KEYS}
    changed = {k for k in KEYS if joined[k] != before[k]}
    assert all(joined[k] == "kw-d" for k in changed)
    assert abs(len(changed) - len(KEYS) / 4) < len(KEYS) * 0.05


def test_an_instance_alone_or_not_yet_listed_probes_what_it_should() -> None:
    assert share(KEYS[:10], [], "kw-a") == set(KEYS[:10])
    assert share(KEYS[:10], ["kw-a"], "kw-a") == set(KEYS[:10])
    # Not yet in the members it read: it counts itself in, so it never probes everything twice over.
    counts = Counter(owner(k, ["kw-a", "kw-b"]) for k in KEYS)
    assert len(share(KEYS, ["kw-b"], "kw-a")) == counts["kw-a"]


def test_cluster_defaults_work_with_nothing_set() -> None:
    c = Config().cluster
    assert (c.instance, c.heartbeat, c.takeover_timeout, c.metrics) == (None, 2.0, 10.0, "fleet")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"heartbeat": "5s", "takeover_timeout": "8s"}, "takeover_timeout: must be at least twice the heartbeat"),
        ({"heartbeat": "10ms"}, "heartbeat: must be at least 100ms"),
        ({"instance": "has space"}, "instance"),
        ({"metrics": "all"}, "metrics"),
    ],
)
def test_bad_cluster_settings_are_refused_naming_the_field(fields: dict, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        Config.model_validate({"cluster": fields})
    assert problem in str(info.value)


def test_a_second_lock_on_one_sqlite_file_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    import os

    first = InstanceLock(tmp_path / "keywatch.db")
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning) as info:
            InstanceLock(tmp_path / "keywatch.db").acquire()
        assert f"pid {os.getpid()}" in str(info.value) and "keywatch.db.lock" in str(info.value)
        other = InstanceLock(tmp_path / "other.db")  # another database: its own lock
        other.acquire()
        other.release()
    finally:
        first.release()
    again = InstanceLock(tmp_path / "keywatch.db")
    again.acquire()
    again.release()
    assert oct((tmp_path / "keywatch.db.lock").stat().st_mode & 0o777) == "0o600"
