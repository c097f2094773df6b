"""DeepSeek and Moonshot probe through their balance endpoints, over real HTTP against the simulator.

The lesson these tests keep: an answer that is not a balance is a failed probe, never "balance 0".
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.providers.balance import DeepSeekAdapter, MoonshotAdapter
from keywatch.providers.base import NotSupported

SECRET = "sk-3f9a2b7c4d1e8f6a5b0c9d2e7f1a4b8c"

PROVIDERS = {
    "deepseek": (DeepSeekAdapter, "/deepseek"),
    "moonshot": (MoonshotAdapter, "/moonshot/v1"),
}


def key(provider: str, base_url: str) -> ManagedKey:
    return ManagedKey(
        name=f"{provider}-prod",
        provider=provider,
        secret=Secret(SECRET),
        secret_ref="env:K",
        base_url=base_url,
    )


async def probe(http, fresh_sim, provider: str, timeout: float = 5.0):
    cls, path = PROVIDERS[provider]
    return await cls(http, timeout=timeout).probe(key(provider, fresh_sim.url + path))


CASES = [
    # provider, behaviour, extra, health, http status, error code
    ("deepseek", "healthy", {}, Health.HEALTHY, 200, None),
    ("deepseek", "quota_exhausted", {}, Health.QUOTA_EXHAUSTED, 200, "insufficient_balance"),
    ("deepseek", "healthy", {"total_balance": "0.00"}, Health.QUOTA_EXHAUSTED, 200, "insufficient_balance"),
    ("deepseek", "quota_exhausted", {"quota_status": 402}, Health.QUOTA_EXHAUSTED, 402, "unknown_error"),
    ("deepseek", "invalid", {}, Health.INVALID, 401, "authentication_error"),
    ("deepseek", "forbidden", {}, Health.FORBIDDEN, 403, "permission_error"),
    ("deepseek", "rate_limited", {}, Health.RATE_LIMITED, 429, "rate_limit_error"),
    ("deepseek", "server_error", {}, Health.PROVIDER_ERROR, 500, "server_error"),
    ("deepseek", "overloaded", {}, Health.PROVIDER_ERROR, 503, "server_error"),
    ("deepseek", "bad_body", {}, Health.PROVIDER_ERROR, 200, "bad_response"),
    ("moonshot", "healthy", {}, Health.HEALTHY, 200, None),
    ("moonshot", "quota_exhausted", {}, Health.QUOTA_EXHAUSTED, 200, "insufficient_balance"),
    ("moonshot", "healthy", {"available_balance": -0.5}, Health.QUOTA_EXHAUSTED, 200, "insufficient_balance"),
    (
        "moonshot",
        "quota_exhausted",
        {"quota_status": 429},
        Health.QUOTA_EXHAUSTED,
        429,
        "exceeded_current_quota_error",
    ),
    ("moonshot", "invalid", {}, Health.INVALID, 401, "invalid_authentication_error"),
    ("moonshot", "forbidden", {}, Health.FORBIDDEN, 403, "permission_denied_error"),
    ("moonshot", "rate_limited", {}, Health.RATE_LIMITED, 429, "rate_limit_reached_error"),
    ("moonshot", "server_error", {}, Health.PROVIDER_ERROR, 500, "server_error"),
    ("moonshot", "overloaded", {}, Health.PROVIDER_ERROR, 429, "engine_overloaded_error"),
    ("moonshot", "bad_body", {}, Health.PROVIDER_ERROR, 200, "bad_response"),
]


@pytest.mark.parametrize(
    ("provider", "behaviour", "extra", "health", "status", "code"),
    CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)],
)
async def test_each_answer_maps_to_the_documented_health(
    fresh_sim, http, provider, behaviour, extra, health, status, code
):
    fresh_sim.set_key(SECRET, provider, behaviour, **extra)
    result = await probe(http, fresh_sim, provider)
    assert (result.health, result.http_status, result.error_code) == (health, status, code)
    assert SECRET not in repr(result)


async def test_deepseek_balance_figures_are_exact_strings(fresh_sim, http):
    fresh_sim.set_key(
        SECRET, "deepseek", total_balance="110.10", granted_balance="10.10", topped_up_balance="100.00"
    )
    result = await probe(http, fresh_sim, "deepseek")
    assert (result.details["currency"], result.details["balance"]) == ("CNY", "110.10")
    assert result.details["balances"] == [
        {
            "currency": "CNY",
            "total_balance": "110.10",
            "granted_balance": "10.10",
            "topped_up_balance": "100.00",
        }
    ]


async def test_moonshot_balance_keeps_every_digit(fresh_sim, http):
    fresh_sim.set_key(
        SECRET, "moonshot", available_balance=49.58894, voucher_balance=46.58893, cash_balance=3.00001
    )
    result = await probe(http, fresh_sim, "moonshot")
    assert result.details["balance"] == "49.58894"
    assert (result.details["voucher_balance"], result.details["cash_balance"]) == ("46.58893", "3.00001")


async def test_the_deepseek_invalid_key_message_is_masked(fresh_sim, http):
    result = await probe(http, fresh_sim, "deepseek")  # unknown secret
    assert result.health is Health.INVALID
    assert "is invalid" in (result.error_message or "")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_hanging_provider_is_unreachable(fresh_sim, http, provider):
    fresh_sim.set_key(SECRET, provider, "hang")
    result = await probe(http, fresh_sim, provider, timeout=0.3)
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "timeout")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_dropped_connection_does_not_blame_the_key(fresh_sim, http, provider):
    fresh_sim.set_key(SECRET, provider, "disconnect")
    result = await probe(http, fresh_sim, provider)
    assert not result.health.blames_key and result.health is not Health.HEALTHY


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_refused_connection_is_unreachable(http, provider):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cls, _ = PROVIDERS[provider]
    result = await cls(http, timeout=2).probe(key(provider, f"http://127.0.0.1:{port}"))
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "connect_error")


# A local OpenAI-compatible server (vLLM, Ollama ...) behind a misconfigured base URL: it answers 200 to
# anything, with bodies that are not balances. None of them may read as an exhausted account.
UNRELATED_BODIES = [
    b'{"object":"list","data":[{"id":"llama3","object":"model"}]}',
    b'{"is_available":"yes","balance_infos":[]}',
    b'{"is_available":true,"balance_infos":[{"currency":"CNY","total_balance":"n/a"}]}',
    b'{"is_available":true,"balance_infos":[{"currency":"CNY"}]}',
    b'{"code":0,"data":{"voucher_balance":0},"status":true}',
    b'{"code":0,"data":{"available_balance":null},"status":true}',
    b'{"code":0,"data":{"available_balance":"NaN"},"status":true}',
    b'{"code":0,"data":{"available_balance":true},"status":true}',
    b"{}",
    b"[]",
    b"null",
    b"<html><body>Welcome to nginx!</body></html>",
    b"",
]


@pytest.fixture
async def lookalike() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A real HTTP server that answers 200 with the body queued in `bodies[0]` to any GET."""
    bodies: list[bytes] = []

    async def anything(request: web.Request) -> web.Response:
        return web.Response(body=bodies[0], status=200, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", bodies
    await runner.cleanup()


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("body", UNRELATED_BODIES, ids=range(len(UNRELATED_BODIES)))
async def test_an_unrelated_200_body_is_a_bad_response_never_an_empty_balance(
    http, lookalike, provider, body
):
    url, bodies = lookalike
    bodies[:] = [body]
    cls, _ = PROVIDERS[provider]
    result = await cls(http).probe(key(provider, url + "/v1"))
    assert (result.health, result.error_code) == (Health.PROVIDER_ERROR, "bad_response")


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_key_management_is_not_offered_and_says_so(http, provider):
    cls, _ = PROVIDERS[provider]
    with pytest.raises(NotSupported, match="key"):
        await cls(http).disable(key(provider, "http://127.0.0.1:9"))
