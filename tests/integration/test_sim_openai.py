"""The simulator answers the real openai SDK the way the documented OpenAI API does (providers/openai.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable

import httpx2
import openai
import pytest

from keywatch.sim import Simulator, SimulatorThread

SECRET = "sk-proj-4bW9xQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4GDYA"
ADMIN = "sk-admin-Zr8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0ADMN"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator()
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Callable[..., openai.AsyncOpenAI]:
    def make(secret: str = SECRET, timeout: float = 5.0) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=secret, base_url=f"{sim.url}/openai/v1", max_retries=0, timeout=timeout
        )

    return make


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sim.url, timeout=5.0) as c:
        yield c


async def models_status(c: openai.AsyncOpenAI) -> int:
    return (await c.models.with_raw_response.list()).status_code


# --- data plane ---------------------------------------------------------------------------------------------


async def test_healthy_key_lists_models_with_ratelimit_headers(sim, client):
    sim.set_key(SECRET)
    raw = await client().models.with_raw_response.list()
    assert raw.status_code == 200
    assert "gpt-4o-mini" in [m.id for m in raw.parse().data]
    h = raw.headers
    assert h["x-ratelimit-limit-requests"] == "60"
    assert h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-limit-tokens"] == "150000"
    assert h["x-ratelimit-remaining-tokens"] == "149984"
    assert h["x-ratelimit-reset-requests"] == "1s"
    assert h["x-ratelimit-reset-tokens"] == "6m0s"
    assert h["x-request-id"].startswith("req_")
    assert h["openai-organization"]


async def test_healthy_key_gets_a_one_token_completion(sim, client):
    sim.set_key(SECRET)
    completion = await client().chat.completions.create(**CHAT)
    assert completion.model == "gpt-4o-mini"
    assert completion.usage.completion_tokens == 1
    assert completion.choices[0].message.role == "assistant"


async def test_unknown_secret_is_invalid_api_key_with_masked_key(client):
    with pytest.raises(openai.AuthenticationError) as info:
        await client().models.list()
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "invalid_request_error"
    assert "Incorrect API key provided: sk-proj-****GDYA." in err.message
    assert SECRET not in str(err.body)


async def test_missing_authorization_header_is_401(http):
    r = await http.get("/openai/v1/models")
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


ANY_ENDPOINT = [
    ("invalid", openai.AuthenticationError, 401, "invalid_api_key", "invalid_request_error"),
    ("deactivated", openai.AuthenticationError, 401, "invalid_api_key", "invalid_request_error"),
    ("account_deactivated", openai.AuthenticationError, 401, "account_deactivated", "invalid_request_error"),
    ("missing_scope", openai.AuthenticationError, 401, "missing_scope", "invalid_request_error"),
    ("forbidden", openai.PermissionDeniedError, 403, "unsupported_country_region_territory",
     "request_forbidden"),
    ("rate_limited", openai.RateLimitError, 429, "rate_limit_exceeded", "requests"),
    ("server_error", openai.InternalServerError, 500, None, "server_error"),
    ("overloaded", openai.InternalServerError, 503, None, "server_error"),
]


@pytest.mark.parametrize(("behaviour", "exc", "status", "code", "err_type"), ANY_ENDPOINT)
@pytest.mark.parametrize("endpoint", ["models", "chat"])
async def test_behaviours_every_endpoint_shows(sim, client, endpoint, behaviour, exc, status, code, err_type):
    sim.set_key(SECRET, behaviour=behaviour)
    c = client()
    with pytest.raises(exc) as info:
        if endpoint == "models":
            await c.models.list()
        else:
            await c.chat.completions.create(**CHAT)
    err = info.value
    assert (err.status_code, err.code, err.type) == (status, code, err_type)
    assert isinstance(err.message, str)
    assert err.message


BILLABLE = [
    ("quota_exhausted", openai.RateLimitError, 429, "insufficient_quota"),
    ("billing_not_active", openai.RateLimitError, 429, "billing_not_active"),
    ("model_not_found", openai.PermissionDeniedError, 403, "model_not_found"),
]


@pytest.mark.parametrize(("behaviour", "exc", "status", "code"), BILLABLE)
async def test_billable_only_behaviours_show_on_completion_not_on_models(
    sim, client, behaviour, exc, status, code
):
    sim.set_key(SECRET, behaviour=behaviour)
    c = client()
    assert await models_status(c) == 200
    with pytest.raises(exc) as info:
        await c.chat.completions.create(**CHAT)
    assert (info.value.status_code, info.value.code) == (status, code)


async def test_quota_exhausted_has_no_retry_after(sim, client):
    sim.set_key(SECRET, behaviour="quota_exhausted")
    with pytest.raises(openai.RateLimitError) as info:
        await client().chat.completions.create(**CHAT)
    assert info.value.type == "insufficient_quota"
    assert "retry-after" not in info.value.response.headers


async def test_rate_limited_has_retry_after_and_exhausted_ratelimit_headers(sim, client):
    sim.set_key(SECRET, behaviour="rate_limited", retry_after=90)
    with pytest.raises(openai.RateLimitError) as info:
        await client().models.list()
    h = info.value.response.headers
    assert h["retry-after"] == "90"
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "1m30s"
    assert "Please try again in 1m30s" in info.value.message


async def test_server_error_status_can_be_502(sim, client):
    sim.set_key(SECRET, behaviour="server_error", status=502)
    with pytest.raises(openai.InternalServerError) as info:
        await client().models.list()
    assert info.value.status_code == 502


async def test_model_not_found_names_the_requested_model(sim, client):
    sim.set_key(SECRET, behaviour="model_not_found")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client().chat.completions.create(**{**CHAT, "model": "gpt-4o"})
    assert "gpt-4o" in info.value.message


async def test_hang_times_out_at_the_client_and_the_server_stays_up(sim, client):
    sim.set_key(SECRET, behaviour="hang")
    sim.set_key(SECRET + "2")
    with pytest.raises(openai.APITimeoutError):
        await client(timeout=0.3).models.list()
    assert await models_status(client(SECRET + "2")) == 200


async def test_slow_answers_late_but_healthy(sim, client):
    sim.set_key(SECRET, behaviour="slow", delay_s=5)
    with pytest.raises(openai.APITimeoutError):
        await client(timeout=0.3).models.list()
    sim.set_key(SECRET, behaviour="slow", delay_s=0.05)
    assert await models_status(client()) == 200


async def test_disconnect_is_a_connection_error_not_a_timeout(sim, client):
    sim.set_key(SECRET, behaviour="disconnect")
    with pytest.raises(openai.APIConnectionError) as info:
        await client().models.list()
    assert not isinstance(info.value, openai.APITimeoutError)


async def test_bad_body_is_200_without_the_documented_shape(sim, http):
    sim.set_key(SECRET, behaviour="bad_body")
    r = await http.get("/openai/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200
    assert not isinstance(r.json().get("data"), list)
    sim.set_key(SECRET, behaviour="bad_body", bad_body="html")
    r = await http.get("/openai/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")


async def test_per_key_latency_delays_the_answer(sim, client):
    sim.set_key(SECRET, latency_ms=200)
    started = time.perf_counter()
    await client().models.list()
    assert time.perf_counter() - started >= 0.2


# --- control API --------------------------------------------------------------------------------------------


async def test_control_api_changes_behaviour_live(client, http):
    c = client()
    r = await http.post("/_sim/keys", json={"secret": SECRET, "provider": "openai", "behaviour": "healthy"})
    assert r.status_code == 200
    assert SECRET not in r.text
    assert await models_status(c) == 200
    await http.post("/_sim/keys", json={"secret": SECRET, "provider": "openai", "behaviour": "invalid"})
    with pytest.raises(openai.AuthenticationError):
        await c.models.list()
    await http.post("/_sim/keys", json=[{"secret": SECRET, "provider": "openai", "behaviour": "healthy"}])
    assert await models_status(c) == 200
    await http.delete("/_sim/keys")
    with pytest.raises(openai.AuthenticationError):
        await c.models.list()


async def test_control_api_refuses_unknown_behaviour_without_echoing_the_secret(http):
    r = await http.post("/_sim/keys", json={"secret": SECRET, "provider": "openai", "behaviour": "sleepy"})
    assert r.status_code == 400
    assert "sleepy" in r.text
    assert SECRET not in r.text
    assert (await http.get("/_sim/health")).json()["keys"] == 0


async def test_control_api_latency_stats_and_listing_never_show_secrets(client, http):
    await http.post("/_sim/keys", json={"secret": SECRET, "provider": "openai"})
    assert (await http.post("/_sim/latency", json={"latency_ms": 100})).status_code == 200
    started = time.perf_counter()
    await client().models.list()
    assert time.perf_counter() - started >= 0.1
    await http.post("/_sim/latency", json={"latency_ms": 0})
    with pytest.raises(openai.AuthenticationError):
        await client("sk-proj-unknownunknownunknown0000").models.list()
    stats = await http.get("/_sim/stats")
    assert stats.json()["total"] == 2
    listing = await http.get("/_sim/keys")
    for text in (stats.text, listing.text):
        assert SECRET not in text
        assert "unknownunknown" not in text
    health = (await http.get("/_sim/health")).json()
    assert health["status"] == "ok"


# --- Admin API ----------------------------------------------------------------------------------------------


def project_key(sim: Simulator, n: int, project: str = "proj_a", **extra: object) -> str:
    secret = f"sk-proj-{n:04d}abcdefghijklmnopqrstuvwxyz{n:04d}"
    sim.set_key(secret, project_id=project, key_id=f"key_{n:04d}", name=f"app-{n}", **extra)
    return secret


async def test_admin_lists_projects_and_pages_project_keys(sim, http):
    sim.set_key(ADMIN, behaviour="admin")
    secrets = [project_key(sim, n) for n in range(3)]
    project_key(sim, 9, project="proj_b")
    auth = {"Authorization": f"Bearer {ADMIN}"}

    projects = (await http.get("/openai/v1/organization/projects", headers=auth)).json()
    assert projects["object"] == "list"
    assert {p["id"] for p in projects["data"]} == {"proj_a", "proj_b"}

    first = (await http.get("/openai/v1/organization/projects/proj_a/api_keys?limit=2", headers=auth)).json()
    assert [k["id"] for k in first["data"]] == ["key_0000", "key_0001"]
    assert first["has_more"] is True
    assert first["last_id"] == "key_0001"
    rest = await http.get(
        "/openai/v1/organization/projects/proj_a/api_keys",
        params={"limit": 2, "after": first["last_id"]},
        headers=auth,
    )
    assert [k["id"] for k in rest.json()["data"]] == ["key_0002"]
    assert rest.json()["has_more"] is False

    item = first["data"][0]
    assert item["object"] == "organization.project.api_key"
    assert item["redacted_value"] == f"{secrets[0][:8]}...{secrets[0][-4:]}"
    assert item["owner"]["type"] == "user"
    assert all(s not in repr(first) for s in secrets)


async def test_admin_gets_and_deletes_a_key_which_then_stops_working(sim, http, client):
    sim.set_key(ADMIN, behaviour="admin")
    secret = project_key(sim, 1)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    url = "/openai/v1/organization/projects/proj_a/api_keys/key_0001"
    assert (await http.get(url, headers=auth)).json()["id"] == "key_0001"
    assert await models_status(client(secret)) == 200

    deleted = await http.delete(url, headers=auth)
    assert deleted.json() == {
        "object": "organization.project.api_key.deleted", "id": "key_0001", "deleted": True
    }
    assert (await http.get(url, headers=auth)).status_code == 404
    with pytest.raises(openai.AuthenticationError) as info:
        await client(secret).models.list()
    assert info.value.code == "invalid_api_key"


async def test_admin_cannot_delete_a_service_account_key(sim, http):
    sim.set_key(ADMIN, behaviour="admin")
    project_key(sim, 2, owner_type="service_account")
    r = await http.delete("/openai/v1/organization/projects/proj_a/api_keys/key_0002",
                          headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


async def test_admin_endpoints_refuse_project_keys_and_unknown_secrets(sim, http):
    secret = project_key(sim, 3)
    r = await http.get("/openai/v1/organization/projects", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_scope"
    wrong = {"Authorization": "Bearer sk-admin-nope-nope-nope"}
    r = await http.get("/openai/v1/organization/projects", headers=wrong)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    sim.set_key(ADMIN, behaviour="admin")
    r = await http.get("/openai/v1/organization/projects/proj_zzz/api_keys",
                       headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 404


# --- running it ---------------------------------------------------------------------------------------------


def test_simulator_thread_serves_sync_clients():
    with SimulatorThread() as sim:
        sim.set_key(SECRET, behaviour="quota_exhausted")
        c = openai.OpenAI(api_key=SECRET, base_url=f"{sim.url}/openai/v1", max_retries=0, timeout=5)
        assert c.models.with_raw_response.list().status_code == 200
        with pytest.raises(openai.RateLimitError):
            c.chat.completions.create(**CHAT)


async def test_many_concurrent_probes_are_all_answered(sim, client):
    for n in range(50):
        sim.set_key(f"{SECRET}{n}", latency_ms=20)
    clients = [client(f"{SECRET}{n}") for n in range(50)]
    statuses = await asyncio.gather(*(models_status(c) for c in clients))
    assert statuses == [200] * 50


@pytest.mark.slow
def test_module_runs_in_foreground_and_exits_cleanly_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "keywatch.sim", "--host", "127.0.0.1", "--port", "0", "--latency-ms", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("keywatch-sim listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert httpx2.get(f"{url}/_sim/health", timeout=5).json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
