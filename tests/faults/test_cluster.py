"""Several daemons on one PostgreSQL database: each key probed once per interval by the whole fleet, each
alert delivered once, a killed or frozen leader replaced within the takeover timeout, a deposed one fenced.

Real parts throughout: daemons as processes, the simulator and a webhook receiver as HTTP servers, the
PostgreSQL server of this machine (a fresh database per test; skipped, with the reason, without one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from keywatch.cluster.leadership import default_instance
from tests.integration.conftest import free_port, fresh_database, toml_config, unique_secret
from tests.integration.daemon_process import DaemonProcess, readyz, wait_until
from tests.integration.test_notify_delivery import ThreadedReceiver

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
FLEET_KEYS = int(os.environ.get("KEYWATCH_TEST_FLEET_KEYS", "1000"))  # the fleet the acceptance names



def gauge(port: int, line_start: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(line_start):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return None


Instance = DaemonProcess


@dataclass
class Fleet:
    url: str
    instances: list[Instance]
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        for i in self.instances:
            i.start(self.env)

    def leaders(self) -> list[Instance]:
        return [i for i in self.instances if i.leading()]

    def one_leader(self) -> Instance | None:
        """The leader, once exactly one live instance says it leads and every live one names it."""
        live = [i for i in self.instances if i.alive]
        views = [i.status() for i in live]
        leaders = [i for i, v in zip(live, views, strict=True) if v.get("leader")]
        if len(leaders) != 1 or any(v.get("leader_instance") != leaders[0].name for v in views):
            return None
        return leaders[0]

    def stop(self) -> list[int | None]:
        return [i.stop() for i in self.instances]


def make_fleet(
    tmp_path: Path,
    url: str,
    keys: list[dict],
    names: list[str],
    *,
    interval: str = "1s",
    heartbeat: str = "200ms",
    takeover: str = "2s",
    extra: str = "",
    env: dict[str, str],
) -> Fleet:
    instances = []
    for name in names:
        port = free_port()
        cfg = tmp_path / f"{name}.toml"
        text = toml_config(
            keys,
            db=tmp_path / "unused.db",
            listen=f"127.0.0.1:{port}",
            interval=interval,
            concurrency=32,
            extra=extra + f'\n[cluster]\ninstance = "{name}"\nheartbeat = '
            f'"{heartbeat}"\ntakeover_timeout = "{takeover}"\n',
        )
        cfg.write_text(text.replace(f"sqlite:///{tmp_path / 'unused.db'}", url))
        instances.append(Instance(name, port, cfg, tmp_path / f"{name}.log"))
    base = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    return Fleet(url, instances, {**base, **env})


ALERTS = (
    "\n[safety]\ndisable_after_probes = 1\nenable_after_probes = 1\nalert_clear_probes = 1\n"
    "max_disabled_percent = 100\nmax_actions_per_policy_per_hour = 100000\n"
    '\n[alerts]\ngroup_wait = "0s"\nretry_base = "200ms"\nretry_max = "400ms"\n'
    '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
)


@pytest.fixture
def pg_url():
    with fresh_database() as url:
        yield url


def keys_for(sim, prefix: str, n: int) -> tuple[dict[str, str], list[dict]]:
    secrets = {f"{prefix}{i:03d}": unique_secret() for i in range(n)}
    for s in secrets.values():
        sim.set_key(s, provider="openai", behaviour="healthy")
    keys = [
        {"name": k, "provider": "openai", "secret": f"env:KW_{k.upper()}", "base_url": f"{sim.url}/openai/v1"}
        for k in secrets
    ]
    return secrets, keys


def fleet_env(secrets: dict[str, str], rx: ThreadedReceiver) -> dict[str, str]:
    env = {f"KW_{k.upper()}": s for k, s in secrets.items()}
    env.update(KW_HOOK=rx.url("/hook"), KW_HMAC="hmac-secret-0123456789")
    return env


def settled(fleet: Fleet, n: int):
    def check():
        leader = fleet.one_leader()
        live = [i for i in fleet.instances if i.alive]
        return (
            leader is not None
            and len(live) == n
            and all(len(i.status().get("members", [])) == n and (readyz(i.port) or {}).get("ready") for i in live)
        )

    return check


def firing_told(rx: ThreadedReceiver) -> Counter:
    """key_health alerts delivered as firing, per identity, each delivery id counted once (a repeat of one
    message after a crash between send and mark is the same delivery, which receivers drop)."""
    seen: set[str] = set()
    told: Counter = Counter()
    for r in rx.accepted():
        did = r.headers["webhook-id"]
        if did in seen:
            continue
        seen.add(did)
        for a in r.json()["alerts"]:
            if a["firing"] and a["identity"].startswith("key_health:"):
                told[a["identity"]] += 1
    return told


def actions(url: str, kind: str = "disable") -> list[tuple[str, str | None]]:
    """(key, instance) of every action_started of `kind` in the shared audit trail."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            rows = c.execute(text("SELECT key, data FROM events WHERE kind = 'action_started'")).all()
    finally:
        engine.dispose()
    return [(k, (d or {}).get("instance")) for k, d in rows if (d or {}).get("action") == kind]


def test_three_daemons_probe_each_key_once_per_interval_and_alert_once(sim, pg_url, tmp_path: Path, figure) -> None:
    secrets, keys = keys_for(sim, "t", FLEET_KEYS)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(tmp_path, pg_url, keys, ["a", "b", "c"], extra=ALERTS, env=fleet_env(secrets, rx))
        fleet.start()
        try:
            wait_until(settled(fleet, 3), "three members, one leader, all ready")
            before = dict(sim.state.requests_by_secret)
            t0 = time.monotonic()
            time.sleep(4.0)
            after = dict(sim.state.requests_by_secret)
            window = time.monotonic() - t0
            probes = [after.get(s, 0) - before.get(s, 0) for s in secrets.values()]
            # One fleet-wide pass per 1 s interval: about `window` probes per key (three unsharded daemons
            # would make three times as many).
            assert min(probes) >= window - 2 and max(probes) <= window + 1, probes
            assert sum(probes) <= len(keys) * (window + 0.5)
            dead = sorted(secrets)[:6]
            for k in dead:
                sim.set_key(secrets[k], provider="openai", behaviour="invalid")
            want = {f"key_health:{k}" for k in dead}
            wait_until(lambda: want <= set(firing_told(rx)), "an alert for each dead key", timeout=15)
            time.sleep(1.5)  # room for a duplicate to show up
            told = firing_told(rx)
            assert {i: n for i, n in told.items() if i in want} == dict.fromkeys(want, 1)
            leader = fleet.one_leader()
            assert leader is not None
            acted = actions(pg_url)
            assert sorted(k for k, _ in acted) == dead  # one disable per dead key, fleet-wide
            assert {inst for _, inst in acted} == {leader.name}
            leaders = [gauge(i.port, f'keywatch_leader{{instance="{i.name}"}}') for i in fleet.instances]
            assert sorted(leaders) == [0.0, 0.0, 1.0]
            # Every instance shows the whole fleet (cluster.metrics = "fleet"), whoever probed the keys.
            for i in fleet.instances:
                wait_until(
                    lambda i=i: (
                        gauge(i.port, 'keywatch_keys_by_health{provider="openai",health="invalid"}') == len(dead)
                    ),
                    f"{i.name} to show every dead key",
                )
        finally:
            codes = fleet.stop()
    assert codes == [0, 0, 0]
    for i in fleet.instances:
        assert all(s not in i.log.read_text() for s in secrets.values())
    figure(
        f"3 daemons on PostgreSQL, {len(keys)} keys, 1 s interval",
        f"probes per key over {window:.1f}s: min {min(probes)}, max {max(probes)}, "
        f"mean {sum(probes) / len(probes):.2f}; {len(dead)} alerts delivered once each",
    )


def test_share_metrics_show_a_follower_its_own_keys_and_the_leader_all(sim, pg_url, tmp_path: Path) -> None:
    secrets, keys = keys_for(sim, "m", 40)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(
            tmp_path, pg_url, keys, ["a", "b"], extra='\n[cluster]\nmetrics = "share"\n', env=fleet_env(secrets, rx)
        )
        for i in fleet.instances:  # one [cluster] table: fold the test's settings into it
            text = i.config.read_text().replace('\n[cluster]\nmetrics = "share"\n', "")
            i.config.write_text(text.replace("[cluster]\n", '[cluster]\nmetrics = "share"\n'))
        fleet.start()
        try:
            wait_until(settled(fleet, 2), "two members, one leader")
            leader = fleet.one_leader()
            follower = next(i for i in fleet.instances if i is not leader)
            healthy = 'keywatch_keys_by_health{provider="openai",health="healthy"}'
            wait_until(lambda: gauge(leader.port, healthy) == 40, "the leader to show every key")
            # Its share only (rendezvous: about half), from its first cycle that knew of the other member (on
            # a loaded machine its first one may come before it did, and probe every key).
            wait_until(lambda: 0 < (gauge(follower.port, healthy) or 0) < 40, "the follower to show its share")
            assert gauge(leader.port, healthy) == 40
        finally:
            codes = fleet.stop()
    assert codes == [0, 0]


def test_kill9_of_the_leader_a_follower_takes_over_within_the_timeout(sim, pg_url, tmp_path: Path, figure) -> None:
    secrets, keys = keys_for(sim, "k", 30)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(tmp_path, pg_url, keys, ["a", "b", "c"], extra=ALERTS, env=fleet_env(secrets, rx))
        fleet.start()
        try:
            wait_until(settled(fleet, 3), "three members, one leader")
            old = fleet.one_leader()
            assert old is not None
            old.signal(signal.SIGKILL)
            old.proc.wait(10)
            t0 = time.monotonic()
            wait_until(lambda: fleet.one_leader() is not None, "a new leader", timeout=10)
            took = time.monotonic() - t0
            assert took < 2.0 + 0.5  # cluster.takeover_timeout 2s, heartbeat 200 ms
            new = fleet.one_leader()
            assert new is not None and new is not old
            assert new.status()["token"] >= 2
            # The dead member's share is taken over: a key it probed is seen dying and alerted, once.
            dead = sorted(secrets)[0]
            sim.set_key(secrets[dead], provider="openai", behaviour="invalid")
            wait_until(lambda: firing_told(rx).get(f"key_health:{dead}") == 1, "the alert for the dead key", timeout=15)
            time.sleep(1.0)
            assert firing_told(rx)[f"key_health:{dead}"] == 1
            assert actions(pg_url) == [(dead, new.name)]
            # Restarted at once under its name (as systemd does), the killed one joins again, as a follower.
            old.start(fleet.env)
            wait_until(settled(fleet, 3), "the restarted instance back among the members", timeout=15)
            assert fleet.one_leader() is new
            # A second live instance under a name in use is a config mistake: refused, exit 2.
            twin_cfg = tmp_path / "twin.toml"
            twin_cfg.write_text(new.config.read_text().replace(f"127.0.0.1:{new.port}", f"127.0.0.1:{free_port()}"))
            twin = subprocess.run(
                [sys.executable, "-m", "keywatch", "run", "-c", str(twin_cfg)],
                env=fleet.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert twin.returncode == 2 and f"another live instance is named '{new.name}'" in twin.stderr
            status = subprocess.run(
                [sys.executable, "-m", "keywatch", "status", "-c", str(new.config)],
                env=fleet.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert f"cluster: leader {new.name} (token {new.status()['token']})" in status.stdout
        finally:
            fleet.stop()
    figure("kill -9 of the leader (3 daemons)", f"new leader after {took:.2f}s (timeout 2s)")


def test_a_frozen_leader_is_replaced_and_fenced_when_it_resumes(sim, pg_url, tmp_path: Path, figure) -> None:
    secrets, keys = keys_for(sim, "f", 30)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(tmp_path, pg_url, keys, ["a", "b"], extra=ALERTS, env=fleet_env(secrets, rx))
        fleet.start()
        try:
            wait_until(settled(fleet, 2), "two members, one leader")
            old = fleet.one_leader()
            assert old is not None
            other = next(i for i in fleet.instances if i is not old)
            old.signal(signal.SIGSTOP)
            t0 = time.monotonic()
            wait_until(other.leading, "the follower to take over from the frozen leader", timeout=10)
            took = time.monotonic() - t0
            dead = sorted(secrets)[:4]  # keys die while the old leader is frozen
            for k in dead:
                sim.set_key(secrets[k], provider="openai", behaviour="invalid")
            want = {f"key_health:{k}" for k in dead}
            wait_until(lambda: want <= set(firing_told(rx)), "the new leader's alerts", timeout=15)
            old.signal(signal.SIGCONT)
            wait_until(
                lambda: old.status().get("leader") is False and old.status().get("leader_instance") == other.name,
                "the resumed leader to step down",
                timeout=10,
            )
            time.sleep(1.5)  # the resumed process runs its pending work now: none of it may act
            assert fleet.one_leader() is other
            assert gauge(old.port, f'keywatch_leader{{instance="{old.name}"}}') == 0
            told = firing_told(rx)
            assert {i: told[i] for i in want} == dict.fromkeys(want, 1)
            assert sorted(actions(pg_url)) == [(k, other.name) for k in dead]
            assert "leadership_lost" in old.log.read_text()
        finally:
            codes = fleet.stop()
    assert codes == [0, 0]
    figure(
        "SIGSTOP of the leader (2 daemons)",
        f"follower took over after {took:.2f}s (timeout 2s); resumed "
        "leader stepped down, 0 actions, 0 duplicate alerts",
    )


def test_ended_database_sessions_degrade_then_one_leader_again(sim, pg_url, tmp_path: Path) -> None:
    """The server ends every session of the daemons (as a PostgreSQL restart does): they recover, elect one
    leader, and what happened meanwhile is written and alerted once."""
    from sqlalchemy import create_engine, text

    secrets, keys = keys_for(sim, "p", 20)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(tmp_path, pg_url, keys, ["a", "b", "c"], extra=ALERTS, env=fleet_env(secrets, rx))
        fleet.start()
        admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
        try:
            wait_until(settled(fleet, 3), "three members, one leader")
            first = fleet.one_leader()
            dbname = pg_url.rsplit("/", 1)[1]
            for _ in range(2):
                with admin.connect() as c:
                    c.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                            "AND pid <> pg_backend_pid()"
                        ),
                        {"d": dbname},
                    )
                time.sleep(0.3)
            dead = sorted(secrets)[0]
            sim.set_key(secrets[dead], provider="openai", behaviour="invalid")
            wait_until(settled(fleet, 3), "one leader again", timeout=15)
            wait_until(lambda: firing_told(rx).get(f"key_health:{dead}", 0) >= 1, "the alert", timeout=15)
            time.sleep(1.0)
            assert firing_told(rx)[f"key_health:{dead}"] == 1
            assert len(actions(pg_url)) == 1
            assert all(i.alive for i in fleet.instances)
            assert first is not None
        finally:
            admin.dispose()
            codes = fleet.stop()
    assert codes == [0, 0, 0]


@pytest.mark.skipif(
    os.environ.get("KEYWATCH_TEST_PG_RESTART") != "1",
    reason="restarts this machine's PostgreSQL (disrupts other users); set KEYWATCH_TEST_PG_RESTART=1",
)
def test_postgresql_restart_under_the_fleet(sim, pg_url, tmp_path: Path) -> None:
    secrets, keys = keys_for(sim, "r", 20)
    with ThreadedReceiver() as rx:
        fleet = make_fleet(tmp_path, pg_url, keys, ["a", "b", "c"], extra=ALERTS, env=fleet_env(secrets, rx))
        fleet.start()
        try:
            wait_until(settled(fleet, 3), "three members, one leader")
            # The restart in its two halves, so the fleet is seen while the server is away: every instance
            # degrades (not ready), and a key that dies meanwhile is alerted once the server is back.
            subprocess.run(["pg_ctlcluster", "15", "main", "stop", "-m", "fast"], check=True, timeout=60)
            try:
                wait_until(
                    lambda: not any((readyz(i.port) or {}).get("ready") for i in fleet.instances),
                    "every instance not ready",
                    timeout=15,
                )
                assert all(i.proc.poll() is None for i in fleet.instances)
                dead = sorted(secrets)[0]
                sim.set_key(secrets[dead], provider="openai", behaviour="invalid")
            finally:
                subprocess.run(["pg_ctlcluster", "15", "main", "start"], check=True, timeout=60)
            wait_until(settled(fleet, 3), "recovered, one leader", timeout=30)
            wait_until(lambda: firing_told(rx).get(f"key_health:{dead}") == 1, "the alert", timeout=15)
        finally:
            codes = fleet.stop()
    assert codes == [0, 0, 0]


def test_a_second_daemon_on_one_sqlite_file_is_refused(sim, tmp_path: Path) -> None:
    secrets, keys = keys_for(sim, "s", 2)
    db = tmp_path / "k.db"
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update({f"KW_{k.upper()}": s for k, s in secrets.items()})
    first_port = free_port()
    (tmp_path / "a.toml").write_text(toml_config(keys, db=db, listen=f"127.0.0.1:{first_port}"))
    second_port = free_port()
    (tmp_path / "b.toml").write_text(toml_config(keys, db=db, listen=f"127.0.0.1:{second_port}"))
    first = subprocess.Popen(
        [sys.executable, "-m", "keywatch", "run", "-c", str(tmp_path / "a.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (readyz(first_port) or {}).get("ready"), "the first daemon ready")
        second = subprocess.run(
            [sys.executable, "-m", "keywatch", "run", "-c", str(tmp_path / "b.toml")],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 2
        assert "another keywatch" in second.stderr and str(db) in second.stderr and "PostgreSQL" in second.stderr
        assert (readyz(first_port) or {}).get("ready")  # the first one is untouched
        cluster = (readyz(first_port) or {}).get("cluster")
        assert cluster == {"instance": default_instance(), "leader": True, "mode": "single"}
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    # Once the first one stopped, the lock is free again.
    again = subprocess.Popen(
        [sys.executable, "-m", "keywatch", "run", "-c", str(tmp_path / "b.toml")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: again.poll() is not None or (readyz(second_port) or {}).get("ready"), "a start")
        assert again.poll() is None
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
