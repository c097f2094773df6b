"""The provider side of rotation over real HTTP: each adapter's credential lifecycle against the simulator
(OpenAI, Azure OpenAI, OpenRouter, Anthropic, Bedrock) and moto's server (IAM access keys).

Per provider: create -> the new credential works (after the propagation delay) -> list shows both ->
deactivate old -> old refused -> reactivate works -> delete -> list shows exactly one; and no error text
ever holds a secret.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.anthropic import AnthropicAdapter
from keywatch.providers.base import NotSupported, ProviderActionError, ProviderAdapter
from keywatch.providers.openai import OpenAIAdapter
from keywatch.providers.openrouter import OpenRouterAdapter
from keywatch.sim import Simulator

from .conftest import moto_server, set_moto_auth

DELAY_S = 0.6


async def until_healthy(adapter: ProviderAdapter, key: ManagedKey, within: float = 5.0) -> float:
    """Seconds until `key` probes healthy (bounded); fails the test if it never does."""
    started = time.monotonic()
    while True:
        result = await adapter.probe(key)
        if result.health is Health.HEALTHY:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"new key never became healthy: {result}"
        await asyncio.sleep(0.05)


def assert_no_secret(text: str, *secrets_: str) -> None:
    for s in secrets_:
        assert s not in text
        assert s[-12:] not in text


# --- OpenAI: service-account keys --------------------------------------------------------------------

ADMIN = "sk-admin-Rt8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0Lp2Mq4Nr6Ts8Uv0ADMN"
SVC = "sk-svcacct-Rt4bW9xQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4Lq9Wm3Nb5Vc7Xz1GDYA"


def openai_setup(sim: Simulator, owner_type: str = "service_account") -> tuple[OpenAIAdapter, ManagedKey]:
    sim.set_key(ADMIN, "openai", "admin")
    sim.set_key(SVC, "openai", project_id="proj_prod", key_id="key_old", name="app", owner_type=owner_type,
                owner_id="svc_acct_app" if owner_type == "service_account" else "user_1")
    account = Account("org", "openai", admin_secret=Secret(ADMIN), base_url=f"{sim.url}/openai/v1")
    return OpenAIAdapter(httpx2.AsyncClient(), {"org": account}, timeout=5), ManagedKey(
        "app", "openai", Secret(SVC), "env:APP", base_url=f"{sim.url}/openai/v1", account="org"
    )


async def test_openai_service_account_key_lifecycle(fresh_sim: Simulator) -> None:
    adapter, old = openai_setup(fresh_sim)
    assert (await adapter.rotation_support(old)).mode == "create"
    fresh_sim.state.propagation_delay_s = DELAY_S
    new = await adapter.create_credential(old, name="app-rot-1234")
    new_key = adapter.with_credential(old, new)
    assert new_key.secret is not None and new_key.secret.reveal().startswith("sk-svcacct-")
    assert (await adapter.probe(new_key)).health is Health.INVALID  # not propagated yet
    assert await until_healthy(adapter, new_key) > 0.3
    ids = {c.id for c in await adapter.list_credentials(old)}
    assert ids == {"key_old", new.id}
    assert (await adapter.current_credential(new_key)).id == new.id
    with pytest.raises(NotSupported):
        await adapter.deactivate_credential(new_key, "key_old")  # OpenAI has no reversible deactivate
    await adapter.delete_credential(new_key, "key_old")
    assert (await adapter.probe(old)).health is Health.INVALID
    assert [c.id for c in await adapter.list_credentials(new_key)] == [new.id]
    assert (await adapter.current_credential(new_key)).last_used_at is not None  # the probes above used it
    await adapter.http.aclose()


async def test_openai_user_owned_key_is_assisted_and_refuses_create(fresh_sim: Simulator) -> None:
    adapter, old = openai_setup(fresh_sim, owner_type="user")
    support = await adapter.rotation_support(old)
    assert support.mode == "assisted" and "user-owned" in support.reason
    with pytest.raises(NotSupported, match="dashboard"):
        await adapter.create_credential(old, name="x")
    await adapter.http.aclose()


# --- OpenRouter ----------------------------------------------------------------------------------

MANAGEMENT = "sk-or-v1-" + "a1" * 32
ROUTER = "sk-or-v1-" + "b2" * 32


async def test_openrouter_lifecycle_keeps_the_limit(fresh_sim: Simulator) -> None:
    fresh_sim.set_key(MANAGEMENT, "openrouter", "admin")
    fresh_sim.set_key(ROUTER, "openrouter", hash="h_old", name="router", limit=25)
    base = f"{fresh_sim.url}/openrouter/api/v1"
    account = Account("or", "openrouter", admin_secret=Secret(MANAGEMENT), base_url=base)
    async with httpx2.AsyncClient() as http:
        adapter = OpenRouterAdapter(http, {"or": account}, timeout=5)
        old = ManagedKey("router", "openrouter", Secret(ROUTER), "env:R", base_url=base, account="or")
        assert (await adapter.rotation_support(old)).mode == "create"
        fresh_sim.state.propagation_delay_s = DELAY_S
        new = await adapter.create_credential(old, name="router-rot-1")
        new_key = adapter.with_credential(old, new)
        assert (await adapter.probe(new_key)).health is Health.INVALID
        await until_healthy(adapter, new_key)
        assert {c.id for c in await adapter.list_credentials(old)} == {"h_old", new.id}
        assert (await adapter.probe(new_key)).details["limit"] == "25"
        await adapter.deactivate_credential(new_key, "h_old")
        assert (await adapter.probe(old)).health is Health.INVALID
        assert {c.id: c.status for c in await adapter.list_credentials(new_key)}["h_old"] == "disabled"
        await adapter.reactivate_credential(new_key, "h_old")
        assert (await adapter.probe(old)).health is Health.HEALTHY
        await adapter.delete_credential(new_key, "h_old")
        assert (await adapter.probe(old)).health is Health.INVALID
        assert [c.id for c in await adapter.list_credentials(new_key)] == [new.id]


# --- Anthropic (assisted) ----------------------------------------------------------------------------

ANT_ADMIN = "sk-ant-admin01-" + "Q" * 40
ANT_OLD = "sk-ant-api03-" + "O" * 40 + "oldA"
ANT_NEW = "sk-ant-api03-" + "N" * 40 + "newA"


async def test_anthropic_assisted_retires_the_old_key_through_the_admin_api(fresh_sim: Simulator) -> None:
    base = f"{fresh_sim.url}/anthropic"
    fresh_sim.set_key(ANT_ADMIN, "anthropic", "admin")
    fresh_sim.set_key(ANT_OLD, "anthropic", key_id="apikey_old", name="claude", workspace_id="wrk_1")
    fresh_sim.set_key(ANT_NEW, "anthropic", key_id="apikey_new", name="claude-2", workspace_id="wrk_1")
    fresh_sim.set_key("sk-ant-api03-" + "X" * 44, "anthropic", key_id="apikey_elsewhere", workspace_id="wrk_2")
    account = Account("ant", "anthropic", admin_secret=Secret(ANT_ADMIN), base_url=base)
    async with httpx2.AsyncClient() as http:
        adapter = AnthropicAdapter(http, {"ant": account}, timeout=5)
        old = ManagedKey("claude", "anthropic", Secret(ANT_OLD), "env:A", base_url=base, account="ant")
        assert (await adapter.rotation_support(old)).mode == "assisted"
        with pytest.raises(NotSupported, match="Console"):
            await adapter.create_credential(old, name="x")
        from keywatch.providers.base import NewCredential

        new_key = adapter.with_credential(old, NewCredential("", Secret(ANT_NEW)))
        assert (await adapter.current_credential(new_key)).id == "apikey_new"  # found by its hint
        assert {c.id for c in await adapter.list_credentials(old)} == {"apikey_old", "apikey_new"}
        await adapter.deactivate_credential(new_key, "apikey_old")
        assert (await adapter.probe(old)).health is Health.INVALID
        await adapter.reactivate_credential(new_key, "apikey_old")
        assert (await adapter.probe(old)).health is Health.HEALTHY
        await adapter.delete_credential(new_key, "apikey_old")
        statuses = {c.id: c.status for c in await adapter.list_credentials(new_key)}
        assert statuses == {"apikey_old": "archived", "apikey_new": "active"}
        with pytest.raises(ProviderActionError, match="archived") as err:
            await adapter.reactivate_credential(new_key, "apikey_old")
        assert_no_secret(str(err.value), ANT_OLD, ANT_NEW, ANT_ADMIN)


# --- Azure OpenAI (slots) ----------------------------------------------------------------------------


async def test_azure_regenerates_the_slot_not_in_use(fresh_sim: Simulator) -> None:
    pytest.importorskip("azure.mgmt.cognitiveservices", reason="needs keywatch[azure]")
    from azure.core.credentials import AccessToken

    from keywatch.providers.azure_openai import AzureOpenAIAdapter
    from keywatch.sim.routes import azure as azure_sim

    class FakeCredential:
        def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
            return AccessToken("sim-arm-token", int(time.time()) + 3600)

    acct = azure_sim.add_account(fresh_sim.state, "aoai-rot", endpoint=f"{fresh_sim.url}/azure/aoai-rot")
    account = Account("az", "azure_openai", base_url=f"{fresh_sim.url}/azure/arm",
                      options={"subscription_id": "sub-1", "resource_group": "rg-1", "account_name": "aoai-rot"})
    key1 = acct["key1"]
    async with httpx2.AsyncClient() as http:
        adapter = AzureOpenAIAdapter(http, {"az": account}, timeout=5, credential_factory=lambda a: FakeCredential())
        old = ManagedKey("aoai", "azure_openai", Secret(key1), "env:AZ", account="az",
                         options={"endpoint": f"{fresh_sim.url}/azure/aoai-rot"})
        assert (await adapter.rotation_support(old)).mode == "slots"
        assert (await adapter.current_credential(old)).id == "key1"
        fresh_sim.state.propagation_delay_s = DELAY_S
        new = await adapter.create_credential(old, name="ignored")
        assert new.id == "key2" and acct["key1"] == key1  # the slot in use is never the one regenerated
        assert (await adapter.probe(old)).health is Health.HEALTHY
        new_key = adapter.with_credential(old, new)
        assert (await adapter.probe(new_key)).health is Health.INVALID
        await until_healthy(adapter, new_key)
        assert [c.id for c in await adapter.list_credentials(old)] == ["key1", "key2"]
        with pytest.raises(NotSupported):
            await adapter.deactivate_credential(new_key, "key1")
        fresh_sim.state.propagation_delay_s = 0
        await adapter.delete_credential(new_key, "key1")  # retire: regenerate the old slot
        assert (await adapter.probe(old)).health is Health.INVALID
        assert (await adapter.probe(new_key)).health is Health.HEALTHY
        # The next rotation, from key2, regenerates key1 and leaves key2 alone.
        value2 = acct["key2"]
        again = await adapter.create_credential(new_key, name="ignored")
        assert again.id == "key1" and acct["key2"] == value2


# --- Bedrock API keys (the simulator's IAM fake: moto lacks service-specific credentials) ------------


async def test_bedrock_lifecycle_and_the_two_per_user_limit(fresh_sim: Simulator) -> None:
    pytest.importorskip("boto3", reason="needs keywatch[aws]")
    from keywatch.providers.aws.bedrock import AwsBedrockAdapter
    from keywatch.sim.routes import bedrock as bedrock_sim

    cred = bedrock_sim.create_credential(fresh_sim.state, "bedrock-app")
    account = Account("aws", "aws_bedrock", admin_secret=Secret("m" * 40),
                      options={"access_key_id": "AKIAMANAGEMENT000000", "endpoint_url": f"{fresh_sim.url}/aws/iam"})
    async with httpx2.AsyncClient() as http:
        adapter = AwsBedrockAdapter(http, {"aws": account}, timeout=5)
        old = ManagedKey("bedrock", "aws_bedrock", Secret(cred["token"]), "env:B",
                         base_url=f"{fresh_sim.url}/aws/bedrock", account="aws", options={"user_name": "bedrock-app"})
        fresh_sim.state.propagation_delay_s = DELAY_S
        new = await adapter.create_credential(old, name="bedrock-rot-1")
        new_key = adapter.with_credential(old, new)
        assert (await adapter.probe(new_key)).health is Health.INVALID
        await until_healthy(adapter, new_key)
        old_id = cred["ServiceSpecificCredentialId"]
        assert {c.id for c in await adapter.list_credentials(old)} == {old_id, new.id}
        with pytest.raises(ProviderActionError) as err:  # two already, both active
            await adapter.create_credential(new_key, name="third")
        text = str(err.value)
        assert "bedrock-app" in text and "2" in text and "deactivate and delete" in text and err.value.permanent
        assert_no_secret(text, cred["token"], new.secret.reveal(), "m" * 40)
        await adapter.deactivate_credential(new_key, old_id)
        assert (await adapter.probe(old)).health is Health.INVALID
        await adapter.reactivate_credential(new_key, old_id)
        assert (await adapter.probe(old)).health is Health.HEALTHY
        await adapter.delete_credential(new_key, old_id)
        assert (await adapter.probe(old)).health is Health.INVALID
        assert [c.id for c in await adapter.list_credentials(new_key)] == [new.id]


# --- IAM access keys against moto's server -------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[tuple[str, dict[str, str], Any]]:
    boto3 = pytest.importorskip("boto3", reason="needs keywatch[aws]")
    pytest.importorskip("moto.server", reason="moto[server] is needed to run AWS IAM/STS locally")
    with moto_server() as url:
        yield from _iam_admin(url, boto3)


def _iam_admin(url: str, boto3: Any) -> Iterator[tuple[str, dict[str, str], Any]]:
    try:
        set_moto_auth(url, "inf")
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x" * 40)
        iam.create_user(UserName="kw-rot-admin")
        iam.attach_user_policy(UserName="kw-rot-admin", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
        admin = iam.create_access_key(UserName="kw-rot-admin")["AccessKey"]
        set_moto_auth(url, "0")
        yield url, admin, iam
    finally:
        set_moto_auth(url, "inf")


async def test_iam_access_key_lifecycle_and_the_limit(moto_iam: tuple[str, dict[str, str], Any]) -> None:
    from keywatch.providers.aws.iam import AwsIamAdapter

    url, admin, _ = moto_iam
    import boto3

    iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                       aws_access_key_id=admin["AccessKeyId"], aws_secret_access_key=admin["SecretAccessKey"])
    user = f"app-{secrets.token_hex(4)}"
    iam.create_user(UserName=user)
    first = iam.create_access_key(UserName=user)["AccessKey"]
    account = Account("aws", "aws_iam", admin_secret=Secret(admin["SecretAccessKey"]),
                      options={"access_key_id": admin["AccessKeyId"], "endpoint_url": url, "region": "us-east-1"})
    async with httpx2.AsyncClient() as http:
        adapter = AwsIamAdapter(http, {"aws": account}, timeout=5)
        old = ManagedKey("aws-app", "aws_iam", Secret(first["SecretAccessKey"]), "env:S", account="aws",
                         options={"access_key_id": first["AccessKeyId"], "endpoint_url": url, "region": "us-east-1"})
        assert (await adapter.rotation_support(old)).mode == "create"
        new = await adapter.create_credential(old, name="aws-app-rot-1")
        assert new.fields == {"access_key_id": new.id}
        new_key = adapter.with_credential(old, new)
        assert new_key.options["access_key_id"] == new.id and new_key.options["user_name"] == user
        await until_healthy(adapter, new_key)
        listed = {c.id: c for c in await adapter.list_credentials(old)}
        assert set(listed) == {first["AccessKeyId"], new.id}
        assert listed[new.id].last_used_at is not None  # moto records the probe's use

        with pytest.raises(ProviderActionError) as err:  # two active keys: no room, and why
            await adapter.create_credential(new_key, name="third")
        text = str(err.value)
        assert user in text and first["AccessKeyId"] in text and "still active" in text and err.value.permanent
        assert_no_secret(text, first["SecretAccessKey"], new.secret.reveal(), admin["SecretAccessKey"])

        await adapter.deactivate_credential(new_key, first["AccessKeyId"])
        assert {c.id: c.status for c in await adapter.list_credentials(new_key)}[first["AccessKeyId"]] == "inactive"
        # moto accepts requests signed by an Inactive key (a moto quirk), so the refusal is shown after delete.
        with pytest.raises(ProviderActionError, match="allow_destructive"):  # an inactive leftover, not allowed
            await adapter.create_credential(new_key, name="third")
        await adapter.reactivate_credential(new_key, first["AccessKeyId"])
        assert (await adapter.probe(old)).health is Health.HEALTHY
        await adapter.delete_credential(new_key, first["AccessKeyId"])
        assert (await adapter.probe(old)).health is Health.INVALID
        assert [c.id for c in await adapter.list_credentials(new_key)] == [new.id]
        assert (await adapter.probe(new_key)).health is Health.HEALTHY


async def test_assisted_only_providers_have_no_credential_api() -> None:
    from keywatch.providers.balance import DeepSeekAdapter, MoonshotAdapter

    async with httpx2.AsyncClient() as http:
        for cls in (DeepSeekAdapter, MoonshotAdapter):
            adapter = cls(http)
            key = ManagedKey("k", adapter.name, Secret("sk-" + "d" * 40), "env:K")
            assert (await adapter.rotation_support(key)).mode == "assisted"
            for call in (adapter.deactivate_credential(key, "x"), adapter.delete_credential(key, "x"),
                         adapter.create_credential(key, name="n")):
                with pytest.raises(NotSupported):
                    await call


async def test_the_control_api_sets_the_propagation_delay_and_shows_last_use(fresh_sim: Simulator) -> None:
    async with httpx2.AsyncClient(base_url=fresh_sim.url) as http:
        assert (await http.post("/_sim/propagation", json={"delay_s": -1})).status_code == 400
        assert (await http.post("/_sim/propagation", json={"delay_s": 0.5})).json() == {"delay_s": 0.5}
        assert (await http.get("/_sim/propagation")).json() == {"delay_s": 0.5}
        fresh_sim.set_key(MANAGEMENT, "openrouter", "admin")
        created = (await http.post("/openrouter/api/v1/keys", json={"name": "n"},
                                   headers={"Authorization": f"Bearer {MANAGEMENT}"})).json()
        auth = {"Authorization": f"Bearer {created['key']}"}
        assert (await http.get("/openrouter/api/v1/key", headers=auth)).status_code == 401  # not propagated
        shown = {k["fingerprint"]: k for k in (await http.get("/_sim/keys")).json()["keys"]}
        from keywatch.domain import fingerprint

        assert shown[fingerprint(created["key"])]["last_used_at"] is None  # a refused request is no use
        await asyncio.sleep(0.6)
        assert (await http.get("/openrouter/api/v1/key", headers=auth)).status_code == 200
        listing = (await http.get("/_sim/keys")).text
        assert created["key"] not in listing
        shown = {k["fingerprint"]: k for k in (await http.get("/_sim/keys")).json()["keys"]}
        assert shown[fingerprint(created["key"])]["last_used_at"] is not None
