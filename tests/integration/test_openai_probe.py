"""OpenAI probing over real HTTP against the simulator: each documented answer maps to its health."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx2
import pytest

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.providers.openai import OpenAIAdapter
from tests.integration.conftest import PROBE_PATHS, free_port, shared_client, toml_config, unique_secret

CASES = [
    # behaviour, probe mode, expected health, expected error code
    ("healthy", "models", Health.HEALTHY, None),
    ("invalid", "models", Health.INVALID, "invalid_api_key"),
    ("deactivated", "models", Health.INVALID, "invalid_api_key"),
    ("account_deactivated", "models", Health.INVALID, "account_deactivated"),
    ("missing_scope", "models", Health.FORBIDDEN, "missing_scope"),
    ("forbidden", "models", Health.FORBIDDEN, None),
    ("rate_limited", "models", Health.RATE_LIMITED, "rate_limit_exceeded"),
    ("server_error", "models", Health.PROVIDER_ERROR, None),
    ("overloaded", "models", Health.PROVIDER_ERROR, None),
    ("bad_body", "models", Health.PROVIDER_ERROR, "bad_response"),
    ("hang", "models", Health.UNREACHABLE, "timeout"),
    ("disconnect", "models", Health.UNREACHABLE, None),
    # The zero-token probe cannot see exhausted quota; the 1-token completion probe can.
    ("quota_exhausted", "models", Health.HEALTHY, None),
    ("quota_exhausted", "completion", Health.QUOTA_EXHAUSTED, "insufficient_quota"),
    ("billing_not_active", "completion", Health.QUOTA_EXHAUSTED, "billing_not_active"),
    ("model_not_found", "completion", Health.FORBIDDEN, "model_not_found"),
    ("rate_limited", "completion", Health.RATE_LIMITED, "rate_limit_exceeded"),
    ("server_error", "completion", Health.PROVIDER_ERROR, None),
    ("invalid", "completion", Health.INVALID, "invalid_api_key"),
]


def client(path: str, timeout: float = 1.0) -> httpx2.AsyncClient:
    """A plain client (the SDK's own request path) or the daemon's shared one (the lean path)."""
    return httpx2.AsyncClient(timeout=timeout) if path == "sdk" else shared_client("lean", 4, timeout)


async def probe(sim, behaviour: str, mode: str, *, base_url: str | None = None, timeout: float = 1.0,
                path: str = "sdk"):
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour=behaviour)
    key = ManagedKey(name="k", provider="openai", secret=Secret(secret), secret_ref="env:X",
                     base_url=base_url or f"{sim.url}/openai/v1", probe=mode)
    async with client(path, timeout) as http:
        adapter = OpenAIAdapter(http, timeout=timeout)
        return await adapter.probe(key), secret


@pytest.mark.parametrize("path", PROBE_PATHS)
@pytest.mark.parametrize(("behaviour", "mode", "health", "code"), CASES,
                         ids=[f"{b}-{m}" for b, m, _, _ in CASES])
async def test_documented_answers_map_to_health(sim, behaviour, mode, health, code, path) -> None:
    result, secret = await probe(sim, behaviour, mode, path=path)
    assert result.health is health, result
    if code is not None:
        assert result.error_code == code
    assert secret not in (result.error_message or "")


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_missing_scope_with_null_code_is_forbidden_not_invalid(sim, path) -> None:
    """Real restricted-key bodies often carry `code: null`; the message still tells."""
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="missing_scope", error_code=None)
    key = ManagedKey(name="k", provider="openai", secret=Secret(secret), secret_ref="env:X",
                     base_url=f"{sim.url}/openai/v1")
    async with client(path) as http:
        result = await OpenAIAdapter(http).probe(key)
    assert result.http_status == 401 and result.health is Health.FORBIDDEN


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_rate_limit_headers_are_read(sim, path) -> None:
    result, _ = await probe(sim, "healthy", "models", path=path)
    rl = result.ratelimit
    assert rl is not None
    assert rl.requests_remaining == 59 and rl.tokens_remaining == 149984
    assert rl.requests_reset_seconds == 1.0 and rl.tokens_reset_seconds == 360.0


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_rate_limited_carries_retry_after(sim, path) -> None:
    result, _ = await probe(sim, "rate_limited", "models", path=path)
    assert result.http_status == 429 and result.retry_after_seconds is not None


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_unknown_key_is_invalid_and_quoted_masked(sim, path) -> None:
    key = ManagedKey(name="k", provider="openai", secret=Secret("sk-proj-neverregistered0000000000WXYZ"),
                     secret_ref="env:X", base_url=f"{sim.url}/openai/v1")
    async with client(path) as http:
        result = await OpenAIAdapter(http).probe(key)
    assert result.health is Health.INVALID and result.http_status == 401
    assert "neverregistered" not in (result.error_message or "")


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_never_blames_the_key(sim, status) -> None:
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="server_error", status=status)
    key = ManagedKey(name="k", provider="openai", secret=Secret(secret), secret_ref="env:X",
                     base_url=f"{sim.url}/openai/v1", probe="completion")
    async with httpx2.AsyncClient() as http:
        result = await OpenAIAdapter(http).probe(key)
    assert result.health is Health.PROVIDER_ERROR and result.http_status == status


@pytest.mark.parametrize("path", PROBE_PATHS)
async def test_refused_connection_is_unreachable(path) -> None:
    port = free_port()  # nothing listens there
    key = ManagedKey(name="k", provider="openai", secret=Secret(unique_secret()), secret_ref="env:X",
                     base_url=f"http://127.0.0.1:{port}/v1")
    async with client(path) as http:
        result = await OpenAIAdapter(http).probe(key)
    assert result.health is Health.UNREACHABLE and result.error_code == "connect_error"


def test_check_json_contract_and_exit_code(sim, tmp_path) -> None:
    secrets = {}
    keys = []
    for name, behaviour, probe_mode in [("good", "healthy", "models"), ("slow-limit", "rate_limited", "models"),
                                        ("broke", "quota_exhausted", "completion"), ("dead", "invalid", "models")]:
        secrets[name] = unique_secret()
        sim.set_key(secrets[name], provider="openai", behaviour=behaviour)
        keys.append({"name": name, "provider": "openai", "secret": f"env:KW_{name.replace('-', '_').upper()}",
                     "base_url": f"{sim.url}/openai/v1", "probe": probe_mode})
    cfg = tmp_path / "k.toml"
    cfg.write_text(toml_config(keys, db=tmp_path / "k.db"))
    env = {"PATH": "/usr/bin:/bin", **{f"KW_{n.replace('-', '_').upper()}": s for n, s in secrets.items()}}
    proc = subprocess.run([sys.executable, "-m", "keywatch", "check", "-c", str(cfg), "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert [o["key"] for o in out] == ["good", "slow-limit", "broke", "dead"]
    assert [o["health"] for o in out] == ["healthy", "rate_limited", "quota_exhausted", "invalid"]
    for o in out:
        assert set(o) >= {"key", "provider", "health", "http_status", "error_code", "error_message", "latency_ms",
                          "fingerprint", "ratelimit"}
        assert set(o["ratelimit"]) == {"requests_remaining", "tokens_remaining", "requests_reset_seconds",
                                       "tokens_reset_seconds"}
        assert o["fingerprint"].startswith("sha256:")
    assert out[0]["ratelimit"]["tokens_remaining"] == 149984
    assert out[3]["http_status"] == 401 and out[3]["error_code"] == "invalid_api_key"
    for s in secrets.values():
        assert s not in proc.stdout + proc.stderr
    # Only the healthy and the rate-limited key: exit 0.
    proc = subprocess.run([sys.executable, "-m", "keywatch", "check", "-c", str(cfg), "--key", "good",
                           "--key", "slow-limit"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "good" in proc.stdout and "rate_limited" in proc.stdout and "dead" not in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "keywatch", "check", "-c", str(cfg), "--key", "nope"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "no key named 'nope'" in proc.stderr
