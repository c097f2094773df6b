"""The rotation timer with a frozen clock: a key older than its rotate_every is rotated exactly once; a
second check while that rotation is in flight starts nothing new; a key not yet due is left alone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

from freezegun import freeze_time
from prometheus_client import CollectorRegistry

from keywatch.domain import ManagedKey, Secret
from keywatch.providers.base import Credential
from keywatch.rotation.config import RotationSettings
from keywatch.rotation.service import RotationService
from keywatch.rotation.store import RotationStore
from keywatch.runtime import EventLog, Runtime
from keywatch.state import StateTracker
from keywatch.store.repo import Store
from tests.unit.test_rotation_machine import OLD, FakeProvider

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class AgedProvider(FakeProvider):
    async def current_credential(self, key: ManagedKey) -> Credential:
        c = await super().current_credential(key)
        created = NOW - timedelta(days=100) if key.name == "old" else NOW - timedelta(days=1)
        return Credential(c.id, c.name, c.status, created_at=created)

    async def rotation_support(self, key):
        from keywatch.providers.base import RotationSupport

        return RotationSupport("create", "test")


async def test_a_due_key_is_rotated_exactly_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    providers = {"old": AgedProvider(), "young": AgedProvider()}
    for name in ("old", "young"):
        (tmp_path / name).write_text(OLD + "\n")
    keys = [ManagedKey(n, "openrouter", Secret(OLD), "env:X",
                       options={"rotate_every": "90d", "publish": [f"file:{tmp_path / n}"], "grace": "1h"})
            for n in ("old", "young")]
    inventory = SimpleNamespace(keys=keys, config=SimpleNamespace(rotation=RotationSettings(verify_interval="1s"),
                                                                  secret_stores=None))
    adapters = {}

    def adapter(provider: str):
        return adapters["current"]

    with freeze_time(NOW):
        rt = Runtime(tracker=StateTracker(), registry=CollectorRegistry(), current_store=lambda: store,
                     current_inventory=lambda: inventory, adapter=adapter, current_scheduler=lambda: None,
                     events=EventLog(lambda: store), clock=lambda: datetime.now(UTC))
        svc = RotationService(rt, RotationStore(store.engine))
        # one provider per key would need routing by key; both keys share one account here
        adapters["current"] = providers["old"]
        await svc.check()
        await asyncio.gather(*svc.tasks.values())
        await svc.check()  # a second cycle while the rotation waits out its grace period
        await asyncio.gather(*svc.tasks.values())
        rows = svc.store.history()
        assert [(r.key, r.step, r.state) for r in rows] == [("old", "grace", "running")]
        assert len(providers["old"].creds) == 2  # one new credential, not two
    store.dispose()


class CountingProvider(AgedProvider):
    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def current_credential(self, key: ManagedKey) -> Credential:
        self.asked += 1
        c = await FakeProvider.current_credential(self, key)
        return Credential(c.id, c.name, c.status, created_at=NOW - timedelta(days=100))


def runtime(tmp_path: Path, store: Store, keys: list[ManagedKey], provider: FakeProvider, **safety) -> Runtime:
    from keywatch.engine.policy_config import SafetySettings

    inventory = SimpleNamespace(keys=keys, config=SimpleNamespace(rotation=RotationSettings(verify_interval="1s"),
                                                                  secret_stores=None,
                                                                  safety=SafetySettings(**safety)))
    return Runtime(tracker=StateTracker(), registry=CollectorRegistry(), current_store=lambda: store,
                   current_inventory=lambda: inventory, adapter=lambda p: provider, current_scheduler=lambda: None,
                   events=EventLog(lambda: store), clock=lambda: datetime.now(UTC))


def aged_keys(tmp_path: Path, names: list[str]) -> list[ManagedKey]:
    for n in names:
        (tmp_path / n).write_text(OLD + "\n")
    return [ManagedKey(n, "openrouter", Secret(OLD), "env:X",
                       options={"rotate_every": "90d", "publish": [f"file:{tmp_path / n}"], "grace": "1h"})
            for n in names]


async def test_dry_run_records_the_timed_rotation_and_does_nothing(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    provider = CountingProvider()
    with freeze_time(NOW):
        rt = runtime(tmp_path, store, aged_keys(tmp_path, ["old"]), provider, dry_run=True)
        svc = RotationService(rt, RotationStore(store.engine))
        await svc.check()
        await svc.check()
        assert svc.store.history() == [] and len(provider.creds) == 1  # nothing rotated
        events = [e for e in store.events() if e.kind == "rotation_dry_run"]
        assert len(events) == 1 and "would rotate old" in events[0].message  # recorded once, not per check
        assert provider.asked == 1  # the creation time is asked once, not at every check
    store.dispose()


async def test_the_timer_stops_at_the_hourly_limit_and_raises_blast_radius(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    provider = CountingProvider()
    alerts = []
    with freeze_time(NOW):
        rt = runtime(tmp_path, store, aged_keys(tmp_path, ["old", "old2", "old3"]), provider,
                     max_actions_per_policy_per_hour=2)

        async def emit(alert) -> None:
            alerts.append(alert)

        rt.emit_alert = emit  # type: ignore[method-assign]
        svc = RotationService(rt, RotationStore(store.engine))
        await svc.check()
        await asyncio.gather(*svc.tasks.values())
        assert len(svc.store.history()) == 2 and len(provider.creds) == 3  # two started, the third waits
        blast = [a for a in alerts if a.identity == "blast_radius:rotation"]
        assert len(blast) == 1 and blast[0].firing and "max_actions_per_policy_per_hour = 2" in blast[0].summary
    store.dispose()


class ById(CountingProvider):
    """Finds the key's credential by the configured provider_key_id, as the Bedrock and OpenRouter adapters do."""

    async def current_credential(self, key: ManagedKey) -> Credential:
        cid = key.options["provider_key_id"]
        c = self.creds[cid]  # KeyError: the credential the config names is gone
        return Credential(cid, c["name"], c["status"], created_at=NOW - timedelta(days=100))


async def test_the_next_rotation_uses_the_id_of_the_credential_the_last_one_made(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    provider = ById()
    (tmp_path / "k").write_text(OLD + "\n")
    options = {"publish": [f"file:{tmp_path / 'k'}"], "grace": "0s", "provider_key_id": "old"}
    keys = [ManagedKey("k", "openrouter", Secret(OLD), "env:X", options=options)]
    rt = runtime(tmp_path, store, keys, provider)
    rt.inventory.config.rotation = RotationSettings(verify_interval="10ms", allow_destructive=True)
    svc = RotationService(rt, RotationStore(store.engine))
    first = (await svc.request("k", actor="test", reason="one")).rotation
    await svc.tasks["k"]
    await svc.check()
    await asyncio.gather(*svc.tasks.values())
    assert svc.store.get(first.id).state == "done" and "old" not in provider.creds
    new_id = svc.store.get(first.id).new_credential
    # the daemon re-read the key's secret; the config still says provider_key_id = "old"
    keys[0] = ManagedKey("k", "openrouter", Secret((tmp_path / "k").read_text().strip()), "env:X", options=options)
    second = await svc.request("k", actor="test", reason="two")
    assert second.ok, second.message
    await svc.tasks["k"]
    assert svc.store.get(second.rotation.id).old_credential == new_id
    store.dispose()
