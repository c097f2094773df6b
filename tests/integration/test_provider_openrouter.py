"""The OpenRouter adapter over real HTTP against the simulator: `GET /key` health and spend figures, and the
management-key round trip (disable, read back, enable, read back)."""

from __future__ import annotations

import socket

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.base import ProviderActionError
from keywatch.providers.openrouter import OpenRouterAdapter
from keywatch.sim import Simulator

SECRET = "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"
OTHER = "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"
MANAGEMENT = "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"
HASH = "f01d52606dc8f0a8303a7b5cc3fa07109c2e346cec7c0a16b40de462992ce943"


def adapter(http: httpx2.AsyncClient, fresh_sim: Simulator, *, timeout: float = 5.0, **kw) -> OpenRouterAdapter:
    base = f"{fresh_sim.url}/openrouter/api/v1"
    account = Account("or", "openrouter", admin_secret=Secret(MANAGEMENT), base_url=base, **kw)
    return OpenRouterAdapter(http, {"or": account}, timeout=timeout)


def managed(url: str, secret: str = SECRET, name: str = "router-prod", **options) -> ManagedKey:
    return ManagedKey(
        name=name,
        provider="openrouter",
        secret=Secret(secret),
        secret_ref="env:OPENROUTER_KEY",
        base_url=f"{url}/openrouter/api/v1",
        account="or",
        options=options,
    )


# --- probe ------------------------------------------------------------------------------------------

CASES = [
    ("healthy", {}, Health.HEALTHY, 200, None),
    ("healthy", {"limit": 20, "usage": 19.5}, Health.HEALTHY, 200, None),
    ("quota_exhausted", {"limit": 5}, Health.QUOTA_EXHAUSTED, 200, "limit_reached"),
    ("quota_exhausted", {"quota_status": 402}, Health.QUOTA_EXHAUSTED, 402, "402"),
    ("invalid", {}, Health.INVALID, 401, "401"),
    ("forbidden", {}, Health.FORBIDDEN, 403, "403"),
    ("rate_limited", {"retry_after": 3}, Health.RATE_LIMITED, 429, "429"),
    ("server_error", {}, Health.PROVIDER_ERROR, 500, "500"),
    ("overloaded", {}, Health.PROVIDER_ERROR, 503, "503"),
    ("bad_body", {}, Health.PROVIDER_ERROR, 200, "bad_response"),
]


@pytest.mark.parametrize(
    ("behaviour", "extra", "health", "status", "code"),
    CASES,
    ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)],
)
async def test_each_answer_maps_to_the_documented_health(fresh_sim, http, behaviour, extra, health, status, code):
    fresh_sim.set_key(SECRET, "openrouter", behaviour, **extra)
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert (result.health, result.http_status, result.error_code) == (health, status, code)
    assert SECRET not in repr(result)


async def test_the_probe_reports_spend_and_limit_as_exact_decimal_strings(fresh_sim, http):
    fresh_sim.set_key(SECRET, "openrouter", limit=20, usage=19.5, limit_reset="monthly")
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    d = result.details
    assert (d["usage"], d["limit"], d["limit_remaining"], d["currency"]) == ("19.5", "20", "0.5", "USD")
    assert d["limit_reset"] == "monthly"


async def test_a_key_without_limit_is_never_exhausted_by_its_spend(fresh_sim, http):
    fresh_sim.set_key(SECRET, "openrouter", usage=1234.5)
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert result.health is Health.HEALTHY
    assert (result.details["limit"], result.details["limit_remaining"]) == (None, None)


async def test_rate_limited_probe_carries_retry_after(fresh_sim, http):
    fresh_sim.set_key(SECRET, "openrouter", "rate_limited", retry_after=3)
    assert (await adapter(http, fresh_sim).probe(managed(fresh_sim.url))).retry_after_seconds == 3


async def test_an_unknown_secret_is_invalid(fresh_sim, http):
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert (result.health, result.error_message) == (Health.INVALID, "User not found.")


async def test_a_hanging_provider_is_unreachable(fresh_sim, http):
    fresh_sim.set_key(SECRET, "openrouter", "hang")
    result = await adapter(http, fresh_sim, timeout=0.3).probe(managed(fresh_sim.url))
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "timeout")


async def test_a_dropped_connection_does_not_blame_the_key(fresh_sim, http):
    fresh_sim.set_key(SECRET, "openrouter", "disconnect")
    result = await adapter(http, fresh_sim).probe(managed(fresh_sim.url))
    assert not result.health.blames_key and result.health is not Health.HEALTHY


async def test_a_refused_connection_is_unreachable(http):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = ManagedKey(
        name="k",
        provider="openrouter",
        secret=Secret(SECRET),
        secret_ref="env:K",
        base_url=f"http://127.0.0.1:{port}/api/v1",
    )
    result = await OpenRouterAdapter(http, timeout=2).probe(key)
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "connect_error")


# --- management key ---------------------------------------------------------------------------------


def seed(fresh_sim: Simulator) -> None:
    fresh_sim.set_key(MANAGEMENT, "openrouter", "admin")
    fresh_sim.set_key(OTHER, "openrouter", hash="a" * 64, name="router-dev")
    fresh_sim.set_key(SECRET, "openrouter", hash=HASH, name="router-prod", limit=50, usage=12.25)


async def test_disable_then_enable_round_trip_is_read_back_from_the_provider(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    key = managed(fresh_sim.url)

    before = await a.metadata(key)
    assert (before.provider_key_id, before.status, before.name) == (HASH, "active", "router-prod")
    assert before.details["limit_remaining"] == "37.75"
    assert before.created_at is not None

    await a.disable(key)
    assert (await a.metadata(key)).status == "disabled"
    assert (await a.probe(key)).health is Health.INVALID  # the provider now refuses the key
    assert (await a.metadata(managed(fresh_sim.url, OTHER, "router-dev"))).status == "active"

    await a.disable(key)  # idempotent
    assert (await a.metadata(key)).status == "disabled"

    await a.enable(key)
    assert (await a.metadata(key)).status == "active"
    assert (await a.probe(key)).health is Health.HEALTHY


async def test_the_key_is_found_by_its_label_across_pages_including_disabled_ones(fresh_sim, http):
    seed(fresh_sim)
    for i in range(5):
        fresh_sim.set_key(
            f"sk-or-v1-{i:064x}", "openrouter", hash=f"{i:064x}", name=f"filler-{i}", disabled=i % 2 == 0
        )
    fresh_sim.state.provider_data("openrouter")["page_size"] = 2
    a = adapter(http, fresh_sim)
    key = managed(fresh_sim.url, name="called-otherwise-here")
    await a.disable(key)
    assert (await a.metadata(key)).provider_key_id == HASH
    assert fresh_sim.state.keys[SECRET].extra["disabled"] is True


async def test_provider_key_id_is_used_when_set(fresh_sim, http):
    seed(fresh_sim)
    meta = await adapter(http, fresh_sim).metadata(managed(fresh_sim.url, name="x", provider_key_id="a" * 64))
    assert meta.name == "router-dev"


async def test_create_makes_a_working_key_with_the_same_limit(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    meta, secret = await a.create(managed(fresh_sim.url), name="router-prod-2")
    assert (meta.name, meta.status, meta.details["limit"]) == ("router-prod-2", "active", "50")
    assert secret.reveal().startswith("sk-or-v1-") and secret.reveal() not in repr(secret)
    new_key = managed(fresh_sim.url, secret.reveal(), "router-prod-2")
    assert (await a.probe(new_key)).health is Health.HEALTHY


async def test_delete_needs_the_destructive_opt_in(fresh_sim, http):
    seed(fresh_sim)
    with pytest.raises(ProviderActionError, match="allow_destructive") as err:
        await adapter(http, fresh_sim).revoke(managed(fresh_sim.url))
    assert err.value.permanent and SECRET in fresh_sim.state.keys

    a = adapter(http, fresh_sim, allow_destructive=True)
    await a.revoke(managed(fresh_sim.url))
    assert (await a.probe(managed(fresh_sim.url))).health is Health.INVALID
    with pytest.raises(ProviderActionError) as err:
        await a.metadata(managed(fresh_sim.url))
    assert err.value.permanent


async def test_an_ordinary_key_as_management_key_is_refused_permanently(fresh_sim, http):
    fresh_sim.set_key(OTHER, "openrouter")
    fresh_sim.set_key(SECRET, "openrouter", hash=HASH, name="router-prod")
    account = Account("or", "openrouter", admin_secret=Secret(OTHER), base_url=f"{fresh_sim.url}/openrouter/api/v1")
    with pytest.raises(ProviderActionError, match="Only management keys") as err:
        await OpenRouterAdapter(http, {"or": account}).disable(managed(fresh_sim.url))
    assert err.value.permanent and err.value.status == 403
    assert OTHER not in str(err.value)
    assert not fresh_sim.state.keys[SECRET].extra.get("disabled")


async def test_a_management_api_outage_is_transient_and_changes_nothing(fresh_sim, http):
    seed(fresh_sim)
    fresh_sim.set_key(MANAGEMENT, "openrouter", "overloaded", admin=True)
    with pytest.raises(ProviderActionError) as err:
        await adapter(http, fresh_sim).disable(managed(fresh_sim.url))
    assert not err.value.permanent
    assert not fresh_sim.state.keys[SECRET].extra.get("disabled")


async def test_a_hanging_management_api_is_a_transient_timeout(fresh_sim, http):
    seed(fresh_sim)
    fresh_sim.set_key(MANAGEMENT, "openrouter", "hang", admin=True)
    with pytest.raises(ProviderActionError, match="no answer") as err:
        await adapter(http, fresh_sim, timeout=0.3).enable(managed(fresh_sim.url))
    assert not err.value.permanent


async def test_a_remembered_hash_that_went_stale_is_searched_again(fresh_sim, http):
    seed(fresh_sim)
    a = adapter(http, fresh_sim)
    assert (await a.metadata(managed(fresh_sim.url))).provider_key_id == HASH
    fresh_sim.set_key(SECRET, "openrouter", hash="b" * 64, name="router-prod")
    assert (await a.metadata(managed(fresh_sim.url))).provider_key_id == "b" * 64
