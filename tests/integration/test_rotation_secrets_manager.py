"""Rotation into AWS Secrets Manager (moto's server), end to end: an application that reads AWSCURRENT
before each request sees no failed request, the staging labels follow AWS's own rotation protocol after
every step, and what remains at the provider is what is published."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation, RotationStore
from keywatch.secretstores import open_destination
from keywatch.sim import Simulator
from keywatch.store.repo import Store

from .test_rotation_e2e import m_new, openrouter
from .test_secret_stores import aws_settings, current, labels, moto_url, sm  # noqa: F401 (fixtures)


async def test_rotation_into_secrets_manager_follows_the_staging_protocol_with_no_failed_request(
        fresh_sim: Simulator, tmp_path: Path, moto_url: str, sm) -> None:  # noqa: F811
    fresh_sim.state.propagation_delay_s = 0.4
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    rows = RotationStore(store.engine)
    name = f"app/router-{uuid.uuid4().hex[:8]}"
    async with httpx2.AsyncClient() as http:
        adapter, key, old = openrouter(fresh_sim, http)
        sm.create_secret(Name=name, SecretString=old)
        (first_version,) = labels(sm, name)
        seen: dict[str, dict[str, list[str]]] = {}

        async def save(r: Rotation) -> None:
            await asyncio.to_thread(rows.save, r)
            seen[r.step] = await asyncio.to_thread(labels, sm, name)

        m = Machine(adapter, [open_destination(f"aws-sm:{name}", aws_settings(moto_url))], save,
                    lambda: datetime.now(UTC),
                    Policy(grace=timedelta(seconds=0.5), verify_timeout=timedelta(seconds=10), verify_interval=0.05,
                           allow_destructive=True))
        sent, failed = 0, []
        stop = asyncio.Event()

        async def application() -> None:  # reads AWSCURRENT before every request, as an AWS SDK user does
            nonlocal sent
            while not stop.is_set():
                value = await asyncio.to_thread(current, sm, name)
                answer = await adapter.probe(ManagedKey(key.name, key.provider, Secret(value), "x",
                                                        base_url=key.base_url, account=key.account))
                sent += 1
                if answer.health is not Health.HEALTHY:
                    failed.append(str(answer.health))

        client = asyncio.ensure_future(application())
        await asyncio.sleep(0.2)
        r = await m.run(new_rotation(key, "create", actor="test", reason="due", at=datetime.now(UTC)), key)
        while r.state == "running":
            await asyncio.sleep(0.1)
            r = await m.run(r, key)
        await asyncio.sleep(0.3)
        stop.set()
        await client
        assert r.state == "done", r.error
        assert sent > 20 and failed == [], failed[:5]
        pending = [v for v, ls in seen["verify"].items() if ls == ["AWSPENDING"]]
        assert len(pending) == 1 and seen["verify"][first_version] == ["AWSCURRENT"]  # pending written, not current
        (new_version,) = pending
        assert seen["grace"] == {first_version: ["AWSPREVIOUS"], new_version: ["AWSCURRENT"]}  # promoted
        assert labels(sm, name) == seen["grace"]
        published = current(sm, name)
        assert published != old
        creds = await adapter.list_credentials(adapter.with_credential(key, m_new(published, r)))
        assert [c.id for c in creds] == [r.new_credential]
        stored = repr([x.as_dict() for x in rows.history()])
        assert old not in stored and published not in stored
    store.dispose()
