"""Every probe path, over the shared client the daemon builds, against the simulator's hostile answers: a body
too large (streamed, endless, or a gzip bomb) is provider_error body_too_large after reading at most the cap,
a trickle ends at the probe timeout as unreachable, a deep nesting is a bad_response and a redirect is never
followed. No answer blames the key."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.providers import registry
from keywatch.providers.clients import make_http_client
from keywatch.sim.server import SimulatorThread
from tests.integration.conftest import PROBE_PATHS, shared_client

TIMEOUT = 1.5  # longer than the slowloris byte interval: a per-read timeout alone never trips
EXPECTED: dict[str, tuple[Health, str]] = {
    "huge": (Health.PROVIDER_ERROR, "body_too_large"),
    "gzip_bomb": (Health.PROVIDER_ERROR, "body_too_large"),
    "endless": (Health.PROVIDER_ERROR, "body_too_large"),
    "slowloris": (Health.UNREACHABLE, "timeout"),
    "deep_json": (Health.PROVIDER_ERROR, "bad_response"),
    "redirect_away": (Health.PROVIDER_ERROR, "redirect"),
}
# provider -> (key options) for a key the simulator answers at its route for that provider
PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {"base_url": "{sim}/openai/v1"},
    "openai_completion": {"base_url": "{sim}/openai/v1", "probe": "completion"},
    "anthropic": {"base_url": "{sim}/anthropic"},
    "openrouter": {"base_url": "{sim}/openrouter/api/v1"},
    "deepseek": {"base_url": "{sim}/deepseek"},
    "moonshot": {"base_url": "{sim}/moonshot/v1"},
    "azure_openai": {"options": {"endpoint": "{sim}/azure/aoai-hostile"}},
    "aws_bedrock": {"base_url": "{sim}/aws/bedrock"},
}


def hostile_key(sim: SimulatorThread, provider: str, behaviour: str) -> ManagedKey:
    spec = PROVIDERS[provider]
    provider = provider.removesuffix("_completion")
    secret = ("ABSK" if provider == "aws_bedrock" else "sk-") + secrets.token_urlsafe(40)
    sim.set_key(secret, provider=provider, behaviour=behaviour)
    options = {k: v.format(sim=sim.url) for k, v in spec.get("options", {}).items()}
    return ManagedKey(
        name=f"{provider}-{behaviour}", provider=provider, secret=Secret(secret), secret_ref="env:KW_HOSTILE",
        base_url=spec["base_url"].format(sim=sim.url) if "base_url" in spec else None,
        probe=spec.get("probe", "models"), options=options,
    )


@pytest.mark.parametrize("path", PROBE_PATHS)
@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_hostile_answer_is_the_providers_fault_and_read_no_further_than_the_cap(
    sim: SimulatorThread, provider: str, behaviour: str, path: str
) -> None:
    key = hostile_key(sim, provider, behaviour)
    http = shared_client(path, 4, TIMEOUT)
    adapter = registry.adapter_class(key.provider)(http, {}, timeout=TIMEOUT, completion_model="gpt-4o-mini")
    try:
        started = time.monotonic()
        async with asyncio.timeout(TIMEOUT + 5):  # an unbounded read would go on for ever
            result = await adapter.probe(key)
        took = time.monotonic() - started
    finally:
        await adapter.aclose()
        await http.aclose()
    assert (result.health, result.error_code) == EXPECTED[behaviour], result
    assert not result.health.blames_key
    assert took < TIMEOUT + 0.5, f"{behaviour} took {took:.1f}s"
    assert key.secret is not None and key.secret.reveal() not in repr(result)


async def test_management_calls_through_the_shared_client_stop_at_the_cap_too(sim: SimulatorThread) -> None:
    from keywatch.providers import mgmt
    from keywatch.providers.base import ProviderActionError

    secret = "sk-" + secrets.token_urlsafe(40)
    sim.set_key(secret, provider="openai", behaviour="gzip_bomb")
    http = make_http_client(4, TIMEOUT)
    try:
        with pytest.raises(ProviderActionError, match="BodyTooLarge"):
            await mgmt.call(http, "GET", f"{sim.url}/openai/v1/models", headers={"Authorization": f"Bearer {secret}"},
                            what="list models", timeout=TIMEOUT)
    finally:
        await http.aclose()


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_many_bombs_at_once_cost_no_more_than_the_cap_each(sim: SimulatorThread, path: str) -> None:
    """Twenty bombs and endless streams probed concurrently: each is cut at the cap, none waits for another."""
    keys = [hostile_key(sim, "openai", "gzip_bomb" if i % 2 else "endless") for i in range(20)]
    http = shared_client(path, 20, TIMEOUT)
    adapter = registry.adapter_class("openai")(http, {}, timeout=TIMEOUT, completion_model="gpt-4o-mini")
    try:
        async with asyncio.timeout(TIMEOUT + 5):
            results = await asyncio.gather(*(adapter.probe(k) for k in keys))
    finally:
        await adapter.aclose()
        await http.aclose()
    assert {(r.health, r.error_code) for r in results} == {(Health.PROVIDER_ERROR, "body_too_large")}
