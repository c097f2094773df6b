"""Rotation into Azure Key Vault end to end: the simulator's Key Vault route over TLS, reached through the
real azure-keyvault-secrets SDK, as the destination of an OpenRouter key rotated against the simulator. An
application reading the latest version with the SDK before every request sees no failed request; the old
value stays as an older version; the one credential left at the provider is the one published."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx2

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation
from keywatch.secretstores import open_destination
from keywatch.sim import Simulator

from .test_rotation_e2e import m_new, openrouter
from .test_secret_stores import StaticToken, vault  # noqa: F401 (fixture)


async def test_rotation_into_key_vault_has_no_failed_request(fresh_sim: Simulator, vault) -> None:  # noqa: F811
    from azure.keyvault.secrets.aio import SecretClient

    url, settings, _ = vault
    cred = StaticToken("kv-test-token-0001")
    fresh_sim.state.propagation_delay_s = 0.4
    app_client = SecretClient(url, cred, verify_challenge_resource=False, connection_verify=settings.azure.ca_bundle)
    async with app_client, httpx2.AsyncClient() as http:
        adapter, key, old = openrouter(fresh_sim, http)
        first = await app_client.set_secret("router-key", old)
        steps: list[str] = []

        async def save(r: Rotation) -> None:
            steps.append(r.step)

        m = Machine(
            adapter,
            [open_destination(f"azure-kv:{url}/router-key", settings, azure_credential=cred)],
            save,
            lambda: datetime.now(UTC),
            Policy(
                grace=timedelta(seconds=0.5),
                verify_timeout=timedelta(seconds=10),
                verify_interval=0.05,
                allow_destructive=True,
            ),
        )
        sent, failures = 0, []
        stop = asyncio.Event()

        async def application() -> None:  # reads the latest version before every request
            nonlocal sent
            while not stop.is_set():
                value = (await app_client.get_secret("router-key")).value
                result = await adapter.probe(ManagedKey("app", "openrouter", Secret(value), "x", base_url=key.base_url))
                sent += 1
                if result.health is not Health.HEALTHY:
                    failures.append(f"{result.health} {result.error_code}")
                await asyncio.sleep(0.005)

        running = asyncio.ensure_future(application())
        await asyncio.sleep(0.2)
        r = await m.run(new_rotation(key, "create", actor="test", reason="due", at=datetime.now(UTC)), key)
        while r.state == "running":
            await asyncio.sleep(0.1)
            r = await m.run(r, key)
        await asyncio.sleep(0.3)
        stop.set()
        await running
        assert r.state == "done", r.error
        assert "promote" in steps and sent > 20 and failures == [], failures[:5]
        published = (await app_client.get_secret("router-key")).value
        assert published != old
        assert (await app_client.get_secret("router-key", first.properties.version)).value == old  # kept
        creds = await adapter.list_credentials(adapter.with_credential(key, m_new(published, r)))
        assert [c.id for c in creds] == [r.new_credential]
        assert (await adapter.probe(key)).health is Health.INVALID
