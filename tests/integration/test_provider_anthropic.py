"""The Anthropic adapter over real HTTP against the simulator: what each answer means for the key,
and the Admin API round trip (disable, read back, enable, read back)."""

from __future__ import annotations

import socket

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.anthropic import AnthropicAdapter, classify_anthropic_error
from keywatch.providers.base import ProviderActionError
from keywatch.sim import Simulator

SECRET = "sk-ant-api03-R2DxQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4Lq9Wm3Nb5Vc7Xz1Pa8Sd6Fg4Hj2Kl0Zx-igAA"
OTHER = "sk-ant-api03-Q7KyT5WnB3vC9xZ2aS4dF6gH8jL0qW1eR3tY5uI7oP9aS2dF4gH6jK8lZ1xC3vB5nM7-zzAA"
ADMIN = "sk-ant-admin01-Zr8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0Lp2Mq4Nr6Ts8Uv0Ww2Xy4Za6Bc8De0Fg2-ADMN"


def adapter(
    http: httpx2.AsyncClient, fresh_sim: Simulator, *, timeout: float = 5.0, **account_kw
) -> AnthropicAdapter:
    account = Account(
        "org", "anthropic", admin_secret=Secret(ADMIN), base_url=f"{fresh_sim.url}/anthropic", **account_kw
    )
    return AnthropicAdapter(http, {"org": account}, timeout=timeout)


def managed(sim_url: str, secret: str = SECRET, name: str = "claude-prod", **options) -> ManagedKey:
    return ManagedKey(
        name=name,
        provider="anthropic",
        secret=Secret(secret),
        secret_ref="env:ANTHROPIC_KEY",
        base_url=f"{sim_url}/anthropic",
        account="org",
        options=options,
    )


# --- probe ------------------------------------------------------------------------------------------

CASES = [
    # behaviour, extra, health, http status, error code
    ("healthy", {}, Health.HEALTHY, 200, None),
    ("slow", {"delay_s": 0}, Health.HEALTHY, 200, None),
    ("invalid", {}, Health.INVALID, 401, "authentication_error"),
    ("quota_exhausted", {}, Health.QUOTA_EXHAUSTED, 400, "invalid_request_error"),
    ("quota_exhausted", {"quota_status": 402}, Health.QUOTA_EXHAUSTED, 402, "billing_error"),
    ("quota_exhausted", {"quota_status": 429}, Health.QUOTA_EXHAUSTED, 429, "enforced_spend_limit_reached"),
    ("rate_limited", {"retry_after": 7}, Health.RATE_LIMITED, 429, "rate_limit_error"),
    ("forbidden", {}, Health.FORBIDDEN, 403, "permission_error"),
    ("server_error", {}, Health.PROVIDER_ERROR, 500, "api_error"),
    ("overloaded", {}, Health.PROVIDER_ERROR, 529, "overloaded_error"),
    ("bad_body", {}, Health.PROVIDER_ERROR, 200, "bad_response"),
]


@pytest.mark.parametrize(
    ("behaviour", "extra", "health", "status", "code"), CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES]
)
async def test_each_answer_maps_to_the_documented_health(fresh_sim, http, behaviour, extra, health, status, code):
    fresh_sim.set_key(SECRET, "anthropic", behaviour, **extra)
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert (result.health, result.http_status, result.error_code) == (health, status, code)
    assert SECRET not in repr(result)


async def test_healthy_probe_reads_the_rfc3339_ratelimit_headers(fresh_sim, http):
    fresh_sim.set_key(SECRET, "anthropic")
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert result.ratelimit is not None
    assert (result.ratelimit.requests_limit, result.ratelimit.requests_remaining) == (50, 49)
    assert result.ratelimit.requests_reset_seconds is not None


async def test_rate_limited_probe_carries_retry_after_and_the_empty_bucket(fresh_sim, http):
    fresh_sim.set_key(SECRET, "anthropic", "rate_limited", retry_after=7)
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert result.retry_after_seconds == 7
    assert result.ratelimit is not None and result.ratelimit.requests_remaining == 0


async def test_an_unknown_secret_is_invalid(fresh_sim, http):
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert result.health is Health.INVALID
    assert result.error_message == "invalid x-api-key"


async def test_an_admin_key_used_as_an_api_key_is_invalid_for_inference(fresh_sim, http):
    fresh_sim.set_key(ADMIN, "anthropic", "admin")
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url, ADMIN))
    assert result.health is Health.INVALID


async def test_a_hanging_provider_is_unreachable_not_the_keys_fault(fresh_sim, http):
    fresh_sim.set_key(SECRET, "anthropic", "hang")
    result = await adapter(http, fresh_sim, timeout=0.3).probe(managed(fresh_sim.url))
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "timeout")


async def test_a_dropped_connection_does_not_blame_the_key(fresh_sim, http):
    fresh_sim.set_key(SECRET, "anthropic", "disconnect")
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert result.health in (Health.UNREACHABLE, Health.PROVIDER_ERROR)
    assert not result.health.blames_key


async def test_a_refused_connection_is_unreachable(http):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = ManagedKey(
        name="k",
        provider="anthropic",
        secret=Secret(SECRET),
        secret_ref="env:K",
        base_url=f"http://127.0.0.1:{port}",
    )
    result = await AnthropicAdapter(http, timeout=2).probe(key)
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "connect_error")


def test_a_400_without_the_credit_message_is_a_configuration_matter_not_the_key():
    assert (
        classify_anthropic_error(400, "invalid_request_error", "max_tokens: Field required")
        is Health.PROVIDER_ERROR
    )
    assert (
        classify_anthropic_error(
            429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"
        )
        is Health.RATE_LIMITED
    )
    assert (
        classify_anthropic_error(503, "billing_error", "credit balance is too low") is Health.PROVIDER_ERROR
    )


# --- Admin API --------------------------------------------------------------------------------------


def seed(fresh_sim: Simulator, **extra) -> None:
    fresh_sim.set_key(ADMIN, "anthropic", "admin")
    fresh_sim.set_key(OTHER, "anthropic", key_id="apikey_01other", name="claude-dev")
    fresh_sim.set_key(SECRET, "anthropic", key_id="apikey_01prod", name="claude-prod", **extra)


async def test_disable_then_enable_round_trip_is_read_back_from_the_provider(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    key = managed(fresh_sim.url)

    before = await a.metadata(key)
    assert (before.provider_key_id, before.status, before.name) == ("apikey_01prod", "active", "claude-prod")
    assert before.created_at is not None and before.created_at.year == 2025

    await a.disable(key)
    assert (await a.metadata(key)).status == "inactive"
    assert (await a.probe(key)).health is Health.INVALID  # the provider now refuses the key
    assert (await a.metadata(managed(fresh_sim.url, OTHER, "claude-dev"))).status == "active"  # only that key

    await a.disable(key)  # idempotent
    assert (await a.metadata(key)).status == "inactive"

    await a.enable(key)
    assert (await a.metadata(key)).status == "active"
    assert (await a.probe(key)).health is Health.HEALTHY


async def test_the_key_is_found_by_its_hint_across_pages(fresh_sim, http):
    seed(fresh_sim)
    for i in range(5):
        fresh_sim.set_key(
            f"sk-ant-api03-filler{i:02d}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-{i:04d}",
            "anthropic",
            key_id=f"apikey_01fill{i}",
            name=f"filler-{i}",
        )
    fresh_sim.state.provider_data("anthropic")["page_size"] = 2
    meta = await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="renamed-in-keywatch"))
    assert meta.provider_key_id == "apikey_01prod"


async def test_provider_key_id_is_used_when_set(fresh_sim, http):
    seed(fresh_sim)
    meta = await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="x", provider_key_id="apikey_01other"))
    assert meta.name == "claude-dev"


async def test_an_ambiguous_name_is_refused_rather_than_guessed(fresh_sim, http):
    fresh_sim.set_key(ADMIN, "anthropic", "admin")
    fresh_sim.set_key(OTHER, "anthropic", key_id="apikey_01a", name="shared")
    fresh_sim.set_key(SECRET[:-4] + "QQQQ", "anthropic", key_id="apikey_01b", name="shared")
    with pytest.raises(ProviderActionError, match="provider_key_id") as err:
        await adapter(http, fresh_sim).disable(managed(fresh_sim.url, name="shared"))
    assert err.value.permanent
    assert {k.extra.get("key_status", "active") for k in fresh_sim.state.keys.values()} == {"active"}


async def test_archiving_needs_the_destructive_opt_in(fresh_sim, http):
    seed(fresh_sim)
    with pytest.raises(ProviderActionError, match="allow_destructive") as err:
        await adapter(http, fresh_sim).revoke(managed(fresh_sim.url))
    assert err.value.permanent
    assert (await adapter(http, fresh_sim).metadata(managed(fresh_sim.url))).status == "active"

    a = adapter(http, fresh_sim, allow_destructive=True)
    await a.revoke(managed(fresh_sim.url))
    assert (await a.metadata(managed(fresh_sim.url))).status == "archived"
    with pytest.raises(ProviderActionError, match="archived") as err:
        await a.enable(managed(fresh_sim.url))
    assert err.value.permanent


async def test_an_admin_api_outage_is_a_transient_failure_and_changes_nothing(fresh_sim, http):
    seed(fresh_sim)
    fresh_sim.set_key(ADMIN, "anthropic", "server_error", admin=True)
    with pytest.raises(ProviderActionError) as err:
        await adapter(http, fresh_sim).disable(managed(fresh_sim.url))
    assert not err.value.permanent and err.value.status == 500
    assert fresh_sim.state.keys[SECRET].extra.get("key_status", "active") == "active"


async def test_an_ordinary_key_as_admin_secret_is_a_permanent_refusal_without_secrets(fresh_sim, http):
    fresh_sim.set_key(OTHER, "anthropic")
    fresh_sim.set_key(SECRET, "anthropic", key_id="apikey_01prod", name="claude-prod")
    account = Account("org", "anthropic", admin_secret=Secret(OTHER), base_url=f"{fresh_sim.url}/anthropic")
    with pytest.raises(ProviderActionError) as err:
        await AnthropicAdapter(http, {"org": account}).metadata(managed(fresh_sim.url))
    assert err.value.permanent and err.value.status == 401
    assert OTHER not in str(err.value) and SECRET not in str(err.value)


async def test_management_without_an_account_says_what_to_configure(fresh_sim, http):
    key = ManagedKey(
        name="k",
        provider="anthropic",
        secret=Secret(SECRET),
        secret_ref="env:K",
        base_url=f"{fresh_sim.url}/anthropic",
    )
    with pytest.raises(ProviderActionError, match=r"\[\[accounts\]\]"):
        await AnthropicAdapter(http).disable(key)


async def test_the_simulator_insists_on_the_version_header_the_adapter_sends(fresh_sim, http):
    fresh_sim.set_key(SECRET, "anthropic")
    raw = await http.get(f"{fresh_sim.url}/anthropic/v1/models", headers={"x-api-key": SECRET})
    assert raw.status_code == 400
    assert (await adapter(http, fresh_sim).probe(managed(fresh_sim.url))).health is Health.HEALTHY


async def test_a_remembered_id_that_went_stale_is_searched_again(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    assert (await a.metadata(managed(fresh_sim.url))).provider_key_id == "apikey_01prod"
    fresh_sim.set_key(SECRET, "anthropic", key_id="apikey_01moved", name="claude-prod")  # same secret, new record
    assert (await a.metadata(managed(fresh_sim.url))).provider_key_id == "apikey_01moved"
