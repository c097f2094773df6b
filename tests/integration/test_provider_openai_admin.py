"""OpenAI key management through the Admin API (the SDK's `client.admin`) against the simulator."""

from __future__ import annotations

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.base import NotSupported, ProviderActionError
from keywatch.providers.openai import OpenAIAdapter, OpenAICompatibleAdapter
from keywatch.sim import Simulator

SECRET = "sk-proj-4bW9xQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4Lq9Wm3Nb5Vc7Xz1GDYA"
ADMIN = "sk-admin-Zr8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0Lp2Mq4Nr6Ts8Uv0ADMN"


def adapter(http: httpx2.AsyncClient, fresh_sim: Simulator, admin: str = ADMIN, **kw) -> OpenAIAdapter:
    account = Account("org", "openai", admin_secret=Secret(admin), base_url=f"{fresh_sim.url}/openai/v1", **kw)
    return OpenAIAdapter(http, {"org": account}, timeout=5)


def managed(url: str, secret: str = SECRET, name: str = "openai-prod", **options) -> ManagedKey:
    return ManagedKey(
        name=name,
        provider="openai",
        secret=Secret(secret),
        secret_ref="env:OPENAI_KEY",
        base_url=f"{url}/openai/v1",
        account="org",
        options=options,
    )


def seed(fresh_sim: Simulator) -> None:
    fresh_sim.set_key(ADMIN, "openai", "admin")
    fresh_sim.set_key(
        SECRET, "openai", project_id="proj_prod", key_id="key_prod", name="openai-prod", created_at=1719000000
    )
    fresh_sim.set_key(
        "sk-proj-otherOtherOtherOtherOtherOtherOtherOtherOther0000",
        "openai",
        project_id="proj_dev",
        key_id="key_dev",
        name="openai-dev",
    )


async def test_metadata_reads_created_and_last_used_from_the_admin_api(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    key = managed(fresh_sim.url)
    before = await a.metadata(key)
    assert (before.provider_key_id, before.name, before.status) == ("key_prod", "openai-prod", "active")
    assert before.created_at is not None and int(before.created_at.timestamp()) == 1719000000
    assert before.last_used_at is None
    assert before.details["project_id"] == "proj_prod"

    assert (await a.probe(key)).health is Health.HEALTHY
    assert (await a.metadata(key)).last_used_at is not None


async def test_the_key_is_found_across_pages_of_projects_and_of_keys(fresh_sim, http):
    fresh_sim.set_key(ADMIN, "openai", "admin")
    for i in range(101):  # more than one page of projects (100 a page) ...
        fresh_sim.set_key(
            f"sk-proj-filler{i:03d}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{i:04d}",
            "openai",
            project_id=f"proj_{i:03d}",
            key_id=f"key_p{i}",
            name=f"filler-{i}",
        )
    for i in range(101):  # ... and more than one page of keys in the last project
        fresh_sim.set_key(
            f"sk-proj-last{i:03d}yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy{i:04d}",
            "openai",
            project_id="proj_zzz",
            key_id=f"key_z{i}",
            name=f"last-{i}",
        )
    fresh_sim.set_key(SECRET, "openai", project_id="proj_zzz", key_id="key_prod", name="openai-prod")
    meta = await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="called-otherwise-here"))
    assert (meta.provider_key_id, meta.details["project_id"]) == ("key_prod", "proj_zzz")
    calls = fresh_sim.state.requests
    assert calls[("openai", "/openai/v1/organization/projects")] == 2
    assert calls[("openai", "/openai/v1/organization/projects/{project_id}/api_keys")] == 101 + 2


async def test_provider_key_id_and_project_read_the_key_directly(fresh_sim, http):
    seed(fresh_sim)
    meta = await adapter(http, fresh_sim).metadata(
        managed(fresh_sim.url, name="x", provider_key_id="key_dev", project="proj_dev")
    )
    assert meta.name == "openai-dev"


async def test_provider_key_id_alone_is_looked_up_across_projects(fresh_sim, http):
    seed(fresh_sim)
    meta = await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="x", provider_key_id="key_dev"))
    assert meta.details["project_id"] == "proj_dev"


async def test_keys_sharing_a_redacted_value_are_told_apart_by_name(fresh_sim, http):
    seed(fresh_sim)
    twin = SECRET[:8] + "Twin" * 10 + SECRET[-4:]
    fresh_sim.set_key(twin, "openai", project_id="proj_prod", key_id="key_twin", name="openai-twin")
    assert (await adapter(http, fresh_sim).metadata(managed(fresh_sim.url))).provider_key_id == "key_prod"
    with pytest.raises(ProviderActionError, match="provider_key_id") as err:
        await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="neither"))
    assert err.value.permanent


async def test_disable_and_enable_are_not_supported_and_say_why(fresh_sim, http):
    seed(fresh_sim)
    for action in (adapter(http, fresh_sim).disable, adapter(http, fresh_sim).enable):
        with pytest.raises(NotSupported, match="no reversible deactivate"):
            await action(managed(fresh_sim.url))
    assert (await adapter(http, fresh_sim).probe(managed(fresh_sim.url))).health is Health.HEALTHY


async def test_delete_needs_the_destructive_opt_in_and_then_the_key_stops_working(fresh_sim, http):
    seed(fresh_sim)
    with pytest.raises(ProviderActionError, match="allow_destructive") as err:
        await adapter(http, fresh_sim).revoke(managed(fresh_sim.url))
    assert err.value.permanent and SECRET in fresh_sim.state.keys

    a = adapter(http, fresh_sim, allow_destructive=True)
    await a.revoke(managed(fresh_sim.url))
    assert (await a.probe(managed(fresh_sim.url))).health is Health.INVALID
    with pytest.raises(ProviderActionError):
        await a.metadata(managed(fresh_sim.url))


async def test_a_service_account_key_cannot_be_deleted_alone(fresh_sim, http):
    seed(fresh_sim)
    fresh_sim.set_key(
        SECRET,
        "openai",
        project_id="proj_prod",
        key_id="key_prod",
        name="openai-prod",
        owner_type="service_account",
    )
    with pytest.raises(ProviderActionError, match="service account") as err:
        await adapter(http, fresh_sim, allow_destructive=True).revoke(managed(fresh_sim.url))
    assert err.value.permanent and err.value.status == 400
    assert SECRET in fresh_sim.state.keys


async def test_a_project_key_as_admin_secret_is_a_permanent_refusal_without_secrets(fresh_sim, http):
    seed(fresh_sim)
    with pytest.raises(ProviderActionError, match="Missing scopes") as err:
        await adapter(http, fresh_sim, admin=SECRET).metadata(managed(fresh_sim.url))
    assert err.value.permanent and err.value.status == 401
    assert SECRET not in str(err.value)


async def test_an_admin_api_outage_is_transient(fresh_sim, http):
    seed(fresh_sim)
    fresh_sim.set_key(ADMIN, "openai", "server_error", admin=True)
    with pytest.raises(ProviderActionError) as err:
        await adapter(http, fresh_sim).metadata(managed(fresh_sim.url))
    assert not err.value.permanent and err.value.status == 500


async def test_openai_compatible_servers_offer_no_management(fresh_sim, http):
    key = ManagedKey(
        name="local",
        provider="openai_compatible",
        secret=Secret(SECRET),
        secret_ref="env:K",
        base_url=f"{fresh_sim.url}/openai/v1",
    )
    with pytest.raises(NotSupported):
        await OpenAICompatibleAdapter(http).metadata(key)
