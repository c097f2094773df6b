"""The Azure OpenAI adapter over real HTTP against the simulator: what each data-plane answer means for the
key, and ARM management through the real azure-mgmt-cognitiveservices SDK (keys read from the account,
regenerate, usages)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.azure_openai import AzureOpenAIAdapter, retry_seconds
from keywatch.providers.base import NotSupported, ProviderActionError
from keywatch.redact import REGISTRY
from keywatch.sim.routes import azure as azure_sim
from keywatch.sim.server import SimulatorThread

from .conftest import free_port

pytest.importorskip(
    "azure.mgmt.cognitiveservices", reason="needs keywatch[azure] (azure-mgmt-cognitiveservices)"
)
from azure.core.credentials import AccessToken


class FakeCredential:
    """What azure-identity would hand over; ARM is the simulator, so any token does."""

    def __init__(self) -> None:
        self.calls = 0

    def get_token(self, *scopes: str, **kw: Any) -> AccessToken:
        self.calls += 1
        return AccessToken("sim-arm-token", int(time.time()) + 3600)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


def data_key(
    sim: SimulatorThread,
    secret: str | None,
    resource: str,
    *,
    ref: str = "env:AZ_KEY",
    account: str | None = None,
    name: str = "azure-app",
) -> ManagedKey:
    return ManagedKey(
        name=name,
        provider="azure_openai",
        secret=Secret(secret) if secret else None,
        secret_ref=ref,
        account=account,
        options={"endpoint": f"{sim.url}/azure/{resource}"},
    )


def new_account(sim: SimulatorThread, **kw: Any) -> tuple[dict[str, Any], Account]:
    name = f"aoai-{secrets.token_hex(3)}"
    acct = sim.call(azure_sim.add_account, sim.state, name, endpoint=f"{sim.url}/azure/{name}")
    account = Account(
        "azure-main",
        "azure_openai",
        base_url=f"{sim.url}/azure/arm",
        options={"subscription_id": "sub-1", "resource_group": "rg-1", "account_name": name},
        **kw,
    )
    return acct, account


def adapter(
    http: httpx2.AsyncClient, account: Account | None = None, timeout: float = 5.0
) -> AzureOpenAIAdapter:
    accounts = {account.name: account} if account else {}
    return AzureOpenAIAdapter(http, accounts, timeout=timeout, credential_factory=lambda a: FakeCredential())


# --- data-plane probe -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "extra", "health", "retry"),
    [
        ("healthy", {}, Health.HEALTHY, None),
        ("invalid", {}, Health.INVALID, None),
        ("invalid", {"code_word": "Unauthorized"}, Health.INVALID, None),
        ("rate_limited", {"retry_after": 7}, Health.RATE_LIMITED, 7.0),
        ("rate_limited", {"retry_after": 3, "short_form": True}, Health.RATE_LIMITED, 3.0),
        ("quota_exhausted", {}, Health.QUOTA_EXHAUSTED, 86400.0),
        ("forbidden", {}, Health.FORBIDDEN, None),
        ("server_error", {}, Health.PROVIDER_ERROR, None),
        ("overloaded", {}, Health.PROVIDER_ERROR, None),
        ("bad_body", {}, Health.PROVIDER_ERROR, None),
    ],
)
async def test_data_plane_answers_map_to_health(
    sim: SimulatorThread,
    http: httpx2.AsyncClient,
    behaviour: str,
    extra: dict,
    health: Health,
    retry: float | None,
) -> None:
    secret = secrets.token_hex(16)
    sim.set_key(secret, "azure_openai", behaviour, **extra)
    result = await adapter(http).probe(data_key(sim, secret, "res1"))
    assert result.health is health
    assert result.retry_after_seconds == retry
    assert secret not in (result.error_message or "")


async def test_unknown_key_is_invalid_with_the_documented_message(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    result = await adapter(http).probe(data_key(sim, secrets.token_hex(16), "res1"))
    assert (result.health, result.http_status) == (Health.INVALID, 401)
    assert "invalid subscription key" in (result.error_message or "")


async def test_healthy_probe_reads_ratelimit_headers(sim: SimulatorThread, http: httpx2.AsyncClient) -> None:
    secret = secrets.token_hex(16)
    sim.set_key(secret, "azure_openai")
    result = await adapter(http).probe(data_key(sim, secret, "res1"))
    assert result.ratelimit is not None
    assert (result.ratelimit.requests_remaining, result.ratelimit.tokens_remaining) == (99, 99000)


async def test_unreachable_and_hanging_endpoints_never_blame_the_key(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    closed = ManagedKey(
        name="a",
        provider="azure_openai",
        secret=Secret("k" * 32),
        secret_ref="env:A",
        options={"endpoint": f"http://127.0.0.1:{free_port()}"},
    )
    assert (await adapter(http).probe(closed)).health is Health.UNREACHABLE
    secret = secrets.token_hex(16)
    sim.set_key(secret, "azure_openai", "hang")
    hung = await adapter(http, timeout=1).probe(data_key(sim, secret, "res1"))
    assert (hung.health, hung.error_code) == (Health.UNREACHABLE, "timeout")


def test_retry_after_day_or_more_comes_from_header_or_message() -> None:
    assert retry_seconds({"retry-after": "86400"}, None) == 86400
    assert retry_seconds({}, "Please retry after 86400 seconds.") == 86400
    assert retry_seconds({"retry-after-ms": "1500"}, "Try again in 2 seconds.") == 2


# --- secrets held by the account (azure:key1) -----------------------------------------------------


async def test_azure_key_reference_is_read_from_the_account_and_masked(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    acct, account = new_account(sim)
    ad = adapter(http, account)
    key = data_key(sim, None, acct["name"], ref="azure:key1", account="azure-main")
    result = await ad.probe(key)
    assert result.health is Health.HEALTHY
    assert REGISTRY.redact(f"key is {acct['key1']}") == f"key is {acct['key1'][:2]}...{acct['key1'][-4:]}"
    assert acct["key1"] not in repr(result)


async def test_regenerated_key_is_read_again_once(sim: SimulatorThread, http: httpx2.AsyncClient) -> None:
    acct, account = new_account(sim, allow_destructive=True)
    ad = adapter(http, account)
    key = data_key(sim, None, acct["name"], ref="azure:key2", account="azure-main")
    assert (await ad.probe(key)).health is Health.HEALTHY
    other = adapter(http, account)  # someone else regenerates key2 behind our back
    await other.regenerate(key)
    assert (await ad.probe(key)).health is Health.HEALTHY  # refused once, re-read, healthy with the new value


async def test_arm_outage_while_resolving_never_blames_the_key(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    acct, account = new_account(sim)
    sim.call(lambda: sim.state.provider_data("azure_openai").__setitem__("arm_behaviour", "server_error"))
    try:
        result = await adapter(http, account).probe(
            data_key(sim, None, acct["name"], ref="azure:key1", account="azure-main")
        )
    finally:
        sim.call(lambda: sim.state.provider_data("azure_openai").pop("arm_behaviour", None))
    assert (result.health, result.error_code) == (Health.PROVIDER_ERROR, "secret_unresolved")
    assert "HTTP 500" in (result.error_message or "")


# --- management through ARM -----------------------------------------------------------------------


async def test_metadata_reads_the_account_and_finds_the_slot(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    acct, account = new_account(sim)
    meta = await adapter(http, account).metadata(
        data_key(sim, acct["key2"], acct["name"], account="azure-main")
    )
    assert (meta.provider_key_id, meta.status, meta.name) == ("key2", "active", acct["name"])
    assert meta.details["endpoint"] == acct["endpoint"]


async def test_regenerate_needs_allow_destructive_then_old_value_stops(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    acct, account = new_account(sim)
    old = acct["key1"]
    key = data_key(sim, old, acct["name"], account="azure-main")
    with pytest.raises(ProviderActionError, match="allow_destructive"):
        await adapter(http, account).revoke(key)
    assert (await adapter(http, account).probe(key)).health is Health.HEALTHY

    destructive = Account(
        account.name,
        account.provider,
        base_url=account.base_url,
        allow_destructive=True,
        options=account.options,
    )
    new = await adapter(http, destructive).regenerate(key)
    assert new.reveal() != old
    assert (await adapter(http).probe(key)).health is Health.INVALID
    assert (await adapter(http).probe(data_key(sim, new.reveal(), acct["name"]))).health is Health.HEALTHY


async def test_disable_and_enable_are_not_supported_with_the_reason(
    http: httpx2.AsyncClient, sim: SimulatorThread
) -> None:
    ad = adapter(http)
    key = data_key(sim, "k" * 32, "res1")
    for action in (ad.disable, ad.enable):
        with pytest.raises(NotSupported, match="no per-key deactivation"):
            await action(key)
    assert "no per-key deactivation" in AzureOpenAIAdapter.notes["disable"]


async def test_account_usages(sim: SimulatorThread, http: httpx2.AsyncClient) -> None:
    acct, account = new_account(sim)
    [usage] = await adapter(http, account).account_usages(
        data_key(sim, acct["key1"], acct["name"], account="azure-main")
    )
    assert (usage["name"], usage["current"], usage["limit"]) == ("OpenAI.Standard.gpt-4o", 30, 450)


async def test_unknown_account_is_a_permanent_error_naming_it(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    _, account = new_account(sim)
    missing = Account(
        account.name,
        account.provider,
        base_url=account.base_url,
        options={**account.options, "account_name": "nope"},
    )
    with pytest.raises(ProviderActionError, match="404") as err:
        await adapter(http, missing).metadata(data_key(sim, "k" * 32, "nope", account="azure-main"))
    assert err.value.permanent
