"""The rotation state machine against an in-memory provider (credentials that work or not, as a real
provider's would) and real file destinations, persisted in a real SQLite store: a rotation ends with the
published value working and exactly one credential at the provider; a failure before promote rolls back
with the old credential untouched; a restart at any recorded step completes or rolls back."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keywatch.domain import Health, ManagedKey, ProbeResult, Secret
from keywatch.providers.base import Credential, NewCredential, ProviderAdapter
from keywatch.rotation.machine import STEPS, Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation, RotationStore
from keywatch.secretstores import open_destination
from keywatch.store.repo import Store

OLD = "sk-or-v1-" + "a" * 40
_n = itertools.count()


class FakeProvider(ProviderAdapter):
    """Credentials in memory: a secret authenticates while its credential is active."""

    name = "openrouter"

    def __init__(self, *, healthy_new: bool = True, fail_create: bool = False) -> None:
        self.creds: dict[str, dict] = {"old": {"secret": OLD, "name": "app", "status": "active", "used": None}}
        self.healthy_new = healthy_new
        self.fail_create = fail_create

    def works(self, secret: str) -> bool:
        return any(c["secret"] == secret and c["status"] == "active" for c in self.creds.values())

    async def probe(self, key: ManagedKey) -> ProbeResult:
        ok = key.secret is not None and self.works(key.secret.reveal())
        return ProbeResult(key.name, key.provider, Health.HEALTHY if ok else Health.INVALID, datetime.now(UTC), 1.0)

    async def current_credential(self, key: ManagedKey) -> Credential:
        cid = next(i for i, c in self.creds.items() if key.secret and c["secret"] == key.secret.reveal())
        return Credential(cid, self.creds[cid]["name"], self.creds[cid]["status"])

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        return [Credential(i, c["name"], c["status"], last_used_at=c["used"]) for i, c in self.creds.items()]

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        if self.fail_create:
            raise RuntimeError("provider said no")
        cid, value = f"c{next(_n)}", f"sk-or-v1-{next(_n):040d}"
        self.creds[cid] = {"secret": value, "name": name, "status": "active" if self.healthy_new else "pending",
                           "used": None}
        return NewCredential(cid, Secret(value), {})

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        self.creds[credential_id]["status"] = "disabled"

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        self.creds.pop(credential_id, None)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def rstore(tmp_path: Path) -> RotationStore:
    s = Store(f"sqlite:///{tmp_path / 'k.db'}")
    s.upgrade()
    yield RotationStore(s.engine)
    s.dispose()


def key() -> ManagedKey:
    return ManagedKey("app", "openrouter", Secret(OLD), "env:X")


def machine(provider, dest, rstore, clock, **policy) -> Machine:
    async def save(r: Rotation) -> None:
        await asyncio.to_thread(rstore.save, r)

    async def no_sleep(_: float) -> None:
        clock.now += timedelta(seconds=2)

    pol = Policy(verify_timeout=timedelta(seconds=10), allow_destructive=True, **policy)
    return Machine(provider, [dest], save, clock, pol, sleep=no_sleep)


async def test_a_rotation_publishes_a_working_key_and_leaves_one_credential(tmp_path, rstore) -> None:
    provider, clock = FakeProvider(), Clock()
    path = tmp_path / "app.key"
    path.write_text(OLD + "\n")
    dest = open_destination(f"file:{path}")
    m = machine(provider, dest, rstore, clock)
    r = new_rotation(key(), "create", actor="test", reason="due", at=clock())
    r = await m.run(r, key())
    assert (r.step, r.state) == ("grace", "running")  # waiting out the grace period; both keys still work
    current = await dest.read("current")
    assert current is not None and current.reveal() != OLD and provider.works(current.reveal())
    assert provider.works(OLD)
    clock.now += timedelta(hours=1, seconds=1)
    r = await m.run(rstore.get(r.id), key())
    assert r.state == "done"
    assert list(provider.creds) == [r.new_credential]
    assert provider.works((await dest.read("current")).reveal())
    assert not provider.works(OLD)
    row_text = repr(rstore.get(r.id).as_dict())
    assert OLD not in row_text and current.reveal() not in row_text  # never a secret in the database


async def test_a_new_key_that_never_works_is_rolled_back_and_the_old_one_untouched(tmp_path, rstore) -> None:
    provider, clock = FakeProvider(healthy_new=False), Clock()
    path = tmp_path / "app.key"
    path.write_text(OLD + "\n")
    dest = open_destination(f"file:{path}")
    r = await machine(provider, dest, rstore, clock).run(new_rotation(key(), "create", actor="t", reason="due",
                                                                        at=clock()), key())
    assert r.state == "rolled_back" and "never became healthy" in (r.error or "")
    assert list(provider.creds) == ["old"] and provider.creds["old"]["status"] == "active"
    assert (await dest.read("current")).reveal() == OLD
    assert await dest.read("pending") is None


async def test_a_destination_that_refuses_the_write_means_no_promote(tmp_path, rstore) -> None:
    """A store that answers but refuses (as a read-only file system or a denied IAM policy would)."""
    from keywatch.secretstores.base import StoreUnavailable

    provider, clock = FakeProvider(), Clock()
    path = tmp_path / "app.key"
    path.write_text(OLD + "\n")
    real = open_destination(f"file:{path}")

    class Refusing:
        ref = real.ref
        read, promote, discard_pending, stages = real.read, real.promote, real.discard_pending, real.stages

        async def write_pending(self, secret, *, token, fields=None):
            raise StoreUnavailable(f"{self.ref}: write refused")

    r = await machine(provider, Refusing(), rstore, clock).run(new_rotation(key(), "create", actor="t", reason="d",
                                                                              at=clock()), key())
    assert r.state == "rolled_back" and r.promoted_at is None and "publish_pending" in (r.error or "")
    assert list(provider.creds) == ["old"]
    assert path.read_text().strip() == OLD


@pytest.mark.parametrize("crash_after", [s for s in STEPS if s not in ("grace", "done")])
async def test_a_restart_after_any_step_completes_or_rolls_back(tmp_path, rstore, crash_after) -> None:
    """The process dies right after recording `crash_after` (the in-memory secret is lost); a new machine
    resumes from the row alone."""
    provider, clock = FakeProvider(), Clock()
    path = tmp_path / "app.key"
    path.write_text(OLD + "\n")
    dest = open_destination(f"file:{path}")
    saved: list[Rotation] = []

    class Crash(Exception):
        pass

    async def save(r: Rotation) -> None:
        rstore.save(r)
        saved.append(r)
        if r.step == crash_after and r.intent is None:
            raise Crash

    async def no_sleep(_: float) -> None:
        clock.now += timedelta(seconds=2)

    m = Machine(provider, [dest], save, clock, Policy(grace=timedelta(0), allow_destructive=True), sleep=no_sleep)
    r0 = new_rotation(key(), "create", actor="t", reason="due", at=clock())
    with pytest.raises(Crash):
        await m.run(r0, key())
    published = await dest.read("current")
    assert published is not None and provider.works(published.reveal())
    fresh = Machine(provider, [open_destination(f"file:{path}")], lambda r: asyncio.to_thread(rstore.save, r),
                    clock, Policy(grace=timedelta(0), allow_destructive=True), sleep=no_sleep)
    r = await fresh.run(rstore.get(r0.id), key())
    assert r.state in ("done", "rolled_back")
    assert len(provider.creds) == 1  # no extra key left, none lost
    current = (await dest.read("current")).reveal()
    assert provider.works(current)
    if r.state == "rolled_back":
        assert current == OLD and crash_after in ("create",)


async def test_a_crash_inside_the_create_call_finds_the_new_credential_by_name(tmp_path, rstore) -> None:
    provider, clock = FakeProvider(), Clock()
    path = tmp_path / "app.key"
    path.write_text(OLD + "\n")
    r = new_rotation(key(), "create", actor="t", reason="due", at=clock())
    await provider.create_credential(key(), name=r.new_name)  # the call went through, its answer was lost
    rstore.save(Rotation(**{**r.__dict__, "intent": "create", "old_credential": "old"}))
    m = machine(provider, open_destination(f"file:{path}"), rstore, clock)
    out = await m.run(rstore.get(r.id), key())
    assert out.state == "rolled_back"
    assert list(provider.creds) == ["old"]
