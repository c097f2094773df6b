"""The simulator answers as the real APIs do, checked against what integrators rely on: the official SDKs
(openai, anthropic 2.x) and OpenAI's OpenAPI document (the operations the simulator serves, cut into
tests/data/openai-openapi-subset.json by tests/data/extract_openai_openapi.py).

And keywatch reads what those answers carry: the spend cap in `error.details.error_code`, the workspace in
`scope`, a refused connection as a connection error."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import ModelInfo
from anthropic.types.organization import APIKey
from jsonschema import Draft202012Validator

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.anthropic import AnthropicAdapter
from keywatch.providers.clients import make_http_client
from keywatch.sim import Simulator
from keywatch.sim.routes.usage_openai import set_fixtures

SPEC = json.loads((Path(__file__).resolve().parents[1] / "data" / "openai-openapi-subset.json").read_text())
OPENAI_KEY = "sk-proj-4bW9xQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4GDYA"
OPENAI_ADMIN = "sk-admin-Zr8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0ADMN"
ANT_KEY = "sk-ant-api03-R2DxQ2LmN7pR3sT8vY1zA6cD0eF5gH2jK4Lq9Wm3Nb5Vc7Xz1Pa8Sd6Fg4Hj2Kl0Zx-igAA"
ANT_ADMIN = "sk-ant-admin01-Zr8Qp3Lm5Nx7Tv2Wy4Bc6Df9Gh1Jk0Lp2Mq4Nr6Ts8Uv0Ww2Xy4Za6Bc8De0Fg2-ADMN"
START = 1764547200  # 2025-12-01T00:00:00Z
DAY = 86400


def response_schema(path: str, method: str) -> Draft202012Validator:
    """The 200 answer's schema of an operation, its references resolved inside the cut document."""
    schema = SPEC["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
    return Draft202012Validator({**schema, "components": SPEC["components"]})


def parameter(path: str, name: str) -> dict[str, Any]:
    return next(p for p in SPEC["paths"][path]["get"]["parameters"] if p["name"] == name)


def assert_valid(validator: Draft202012Validator, body: Any, what: str) -> None:
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{what}: " + "; ".join(f"{list(e.path)}: {e.message[:200]}" for e in errors[:5])


@pytest.fixture
async def openai_sim(fresh_sim: Simulator) -> Simulator:
    fresh_sim.set_key(OPENAI_KEY, "openai", project_id="proj_a", key_id="key_a", name="prod")
    fresh_sim.set_key(OPENAI_ADMIN, "openai", "admin")
    set_fixtures(
        fresh_sim.state, "openai",
        usage=[{"at": START + 3600, "api_key_id": "key_a", "project_id": "proj_a", "model": "gpt-4o-mini",
                "input_tokens": 10, "output_tokens": 2, "num_model_requests": 1}],
        costs=[{"at": START + 3600, "project_id": "proj_a", "line_item": "gpt-4o-mini, input", "amount": "0.25"}],
    )
    return fresh_sim


# --- OpenAI: every route's answer against the OpenAPI document -----------------------------------------------

OPENAI_CALLS = [
    # (document path, method, simulator path, key, query, body)
    ("/models", "get", "/models", OPENAI_KEY, {}, None),
    ("/chat/completions", "post", "/chat/completions", OPENAI_KEY, {},
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}),
    ("/organization/projects", "get", "/organization/projects", OPENAI_ADMIN, {}, None),
    ("/organization/projects/{project_id}/api_keys", "get", "/organization/projects/proj_a/api_keys",
     OPENAI_ADMIN, {}, None),
    ("/organization/projects/{project_id}/api_keys/{api_key_id}", "get",
     "/organization/projects/proj_a/api_keys/key_a", OPENAI_ADMIN, {}, None),
    ("/organization/usage/completions", "get", "/organization/usage/completions", OPENAI_ADMIN,
     {"start_time": START, "end_time": START + 2 * DAY, "group_by": ["project_id", "model"]}, None),
    ("/organization/costs", "get", "/organization/costs", OPENAI_ADMIN,
     {"start_time": START, "end_time": START + 2 * DAY, "group_by": ["line_item"]}, None),
    ("/organization/projects/{project_id}/api_keys/{api_key_id}", "delete",
     "/organization/projects/proj_a/api_keys/key_a", OPENAI_ADMIN, {}, None),
]


@pytest.mark.parametrize(("doc_path", "method", "path", "secret", "query", "body"), OPENAI_CALLS,
                         ids=[f"{c[1]} {c[0]}" for c in OPENAI_CALLS])
async def test_openai_answers_match_the_openapi_document(openai_sim, http, doc_path, method, path, secret, query,
                                                         body):
    response = await http.request(method.upper(), f"{openai_sim.url}/openai/v1{path}", params=query, json=body,
                                  headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 200, response.text
    assert_valid(response_schema(doc_path, method), response.json(), f"{method.upper()} {doc_path}")


async def test_openai_sdk_reads_the_project_key_fields_it_requires(openai_sim):
    client = openai.AsyncOpenAI(api_key=OPENAI_KEY, admin_api_key=OPENAI_ADMIN,
                                base_url=f"{openai_sim.url}/openai/v1", max_retries=0)
    keys = client.admin.organization.projects.api_keys
    page = await keys.list("proj_a")
    key = page.data[0]
    assert (key.id, key.owner_project_access) == ("key_a", "active")
    assert key.owner.user is not None and key.owner.user.created_at > 0
    # Validated, not just built: every field the SDK's type declares required is present.
    raw = await keys.with_raw_response.retrieve("key_a", project_id="proj_a")
    type(key).model_validate(json.loads(raw.text))
    await client.close()


USAGE = "/organization/usage/completions"
COSTS = "/organization/costs"


@pytest.mark.parametrize("doc_path", [USAGE, COSTS])
async def test_openai_usage_routes_accept_every_documented_value_and_refuse_others(openai_sim, http, doc_path):
    url = f"{openai_sim.url}/openai/v1{doc_path}"
    auth = {"Authorization": f"Bearer {OPENAI_ADMIN}"}

    async def status(**query: Any) -> tuple[int, Any]:
        r = await http.get(url, params={"start_time": START, "end_time": START + DAY, **query}, headers=auth)
        return r.status_code, r.json()

    widths = parameter(doc_path, "bucket_width")["schema"]["enum"]
    for width in widths:
        assert (await status(bucket_width=width))[0] == 200, width
    code, body = await status(bucket_width="1w")
    assert code == 400 and body["error"]["param"] == "bucket_width"
    if "1h" not in widths:
        assert (await status(bucket_width="1h"))[0] == 400  # costs come in days only
    groups = parameter(doc_path, "group_by")["schema"]["items"]["enum"]
    assert (await status(**{"group_by[]": groups}))[0] == 200
    code, body = await status(**{"group_by[]": ["region"]})
    assert code == 400 and body["error"]["param"] == "group_by"
    # The documented limits: usage 1..31 daily buckets (168 hourly, 1440 by the minute), costs 1..180.
    top = 31 if doc_path == USAGE else 180
    assert (await status(limit=top))[0] == 200
    for bad in (0, top + 1, "ten"):
        code, body = await status(limit=bad)
        assert code == 400 and body["error"]["param"] == "limit", bad
    assert parameter(doc_path, "start_time")["required"] is True
    r = await http.get(url, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "start_time"
    assert parameter(doc_path, "start_time")["schema"]["type"] == "integer"
    code, body = await status(start_time="2025-12-01T00:00:00Z")
    assert code == 400 and body["error"]["param"] == "start_time"


async def test_keywatch_usage_requests_are_ones_the_routes_accept(openai_sim, http):
    """The parameters keywatch's own collector sends pass the same checks (the hourly usage, daily costs)."""
    auth = {"Authorization": f"Bearer {OPENAI_ADMIN}"}
    usage = [("start_time", str(START)), ("end_time", str(START + DAY)), ("bucket_width", "1h"), ("limit", "168"),
             ("group_by[]", "api_key_id"), ("group_by[]", "project_id"), ("group_by[]", "model")]
    costs = [("start_time", str(START)), ("end_time", str(START + DAY)), ("bucket_width", "1d"), ("limit", "180"),
             ("group_by[]", "project_id"), ("group_by[]", "line_item"), ("group_by[]", "api_key_id")]
    for path, params in ((USAGE, usage), (COSTS, costs)):
        r = await http.get(f"{openai_sim.url}/openai/v1{path}", params=params, headers=auth)
        assert r.status_code == 200, r.text


# --- Anthropic: SDK 2.x ---------------------------------------------------------------------------------------

def ant_client(sim: Simulator, secret: str = ANT_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=secret, base_url=f"{sim.url}/anthropic", max_retries=0, timeout=5)


async def test_anthropic_sdk_2_authenticates_with_bearer_and_lists_models(fresh_sim):
    fresh_sim.set_key(ANT_KEY, "anthropic")
    client = ant_client(fresh_sim)
    assert client.auth_headers == {"Authorization": f"Bearer {ANT_KEY}"}  # what 2.x sends: no x-api-key
    page = await client.models.list()
    assert [m.lifecycle for m in page.data] == ["active"] * len(page.data)
    raw = await client.models.with_raw_response.list()
    for item in raw.http_response.json()["data"]:
        ModelInfo.model_validate(item)  # every field 2.x declares required is there
    await client.close()


async def test_anthropic_sdk_2_sends_a_message(fresh_sim):
    fresh_sim.set_key(ANT_KEY, "anthropic")
    client = ant_client(fresh_sim)
    message = await client.messages.create(model="claude-haiku-4-5-20251001", max_tokens=1,
                                           messages=[{"role": "user", "content": "ping"}])
    assert (message.type, message.role, message.content[0].text, message.usage.output_tokens) == (
        "message", "assistant", "pong", 1)
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        await client.messages.with_raw_response.create(model="m", messages=[], **{"max_tokens": 0})
    await client.close()


async def test_a_wrong_bearer_key_is_still_refused(fresh_sim):
    fresh_sim.set_key(ANT_KEY, "anthropic")
    with pytest.raises(anthropic.AuthenticationError):
        await ant_client(fresh_sim, "sk-ant-api03-not-a-key-at-all-0000000000000000000000000000").models.list()


async def test_out_of_credit_shows_on_messages(fresh_sim):
    fresh_sim.set_key(ANT_KEY, "anthropic", "quota_exhausted")
    with pytest.raises(anthropic.BadRequestError, match="credit balance is too low"):
        await ant_client(fresh_sim).messages.create(model="claude-haiku-4-5-20251001", max_tokens=1,
                                                    messages=[{"role": "user", "content": "ping"}])


async def test_the_spend_cap_429_carries_its_error_code_and_no_retry_after(fresh_sim, http):
    fresh_sim.set_key(ANT_KEY, "anthropic", "quota_exhausted", quota_status=429)
    with pytest.raises(anthropic.RateLimitError) as caught:
        await ant_client(fresh_sim).models.list()
    assert caught.value.error_code == "enforced_spend_limit_reached"
    assert "retry-after" not in caught.value.response.headers


async def test_keywatch_reads_the_spend_cap_as_quota_exhausted(fresh_sim, http):
    fresh_sim.set_key(ANT_KEY, "anthropic", "quota_exhausted", quota_status=429)
    result = await ant_adapter(http, fresh_sim).probe(ant_managed(fresh_sim.url))
    assert (result.health, result.http_status, result.error_code) == (
        Health.QUOTA_EXHAUSTED, 429, "enforced_spend_limit_reached")


def ant_adapter(http: httpx2.AsyncClient, sim: Simulator) -> AnthropicAdapter:
    account = Account("org", "anthropic", admin_secret=Secret(ANT_ADMIN), base_url=f"{sim.url}/anthropic")
    return AnthropicAdapter(http, {"org": account}, timeout=5.0)


def ant_managed(sim_url: str) -> ManagedKey:
    return ManagedKey(name="claude-prod", provider="anthropic", secret=Secret(ANT_KEY), secret_ref="env:K",
                      base_url=f"{sim_url}/anthropic", account="org")


@pytest.mark.parametrize("legacy", [False, True], ids=["scope", "top-level workspace_id"])
async def test_key_records_carry_scope_and_keywatch_reads_the_workspace_from_either(fresh_sim, http, legacy):
    fresh_sim.set_key(ANT_ADMIN, "anthropic", "admin")
    fresh_sim.set_key(ANT_KEY, "anthropic", key_id="apikey_01", workspace_id="wrkspc_01", legacy_record=legacy)
    client = ant_client(fresh_sim, ANT_ADMIN)
    raw = await client.organization.api_keys.with_raw_response.retrieve("apikey_01")
    record = raw.http_response.json()
    if not legacy:
        assert "workspace_id" not in record  # the current shape: only scope says it
        key = APIKey.model_validate(record)
        assert (key.scope.type, key.scope.workspace_id) == ("workspace", "wrkspc_01")
    meta = await ant_adapter(http, fresh_sim).metadata(ant_managed(fresh_sim.url))
    assert meta.details["workspace_id"] == "wrkspc_01"
    await client.close()


ANT_USAGE = "/anthropic/v1/organizations/usage_report/messages"
ANT_COSTS = "/anthropic/v1/organizations/cost_report"


@pytest.mark.parametrize(("path", "query", "param"), [
    (ANT_USAGE, {"bucket_width": "2d"}, "bucket_width"),
    (ANT_USAGE, {"group_by[]": "project_id"}, "group_by"),
    (ANT_USAGE, {"bucket_width": "1h", "limit": "169"}, "limit"),
    (ANT_USAGE, {"starting_at": "1764547200"}, "starting_at"),
    (ANT_COSTS, {"bucket_width": "1h"}, "bucket_width"),
    (ANT_COSTS, {"limit": "32"}, "limit"),
    (ANT_COSTS, {"group_by[]": "model"}, "group_by"),
])
async def test_anthropic_usage_routes_refuse_what_the_api_refuses(fresh_sim, http, path, query, param):
    fresh_sim.set_key(ANT_ADMIN, "anthropic", "admin")
    params = {"starting_at": "2025-12-01T00:00:00Z", "ending_at": "2025-12-02T00:00:00Z", **query}
    headers = {"x-api-key": ANT_ADMIN, "anthropic-version": "2023-06-01"}
    r = await http.get(f"{fresh_sim.url}{path}", params=params, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["message"].startswith(f"{param}:")
    ok = {k: v for k, v in params.items() if k not in query or k in ("starting_at", "ending_at")}
    if param == "starting_at":
        ok["starting_at"] = "2025-12-01T00:00:00Z"
    assert (await http.get(f"{fresh_sim.url}{path}", params=ok, headers=headers)).status_code == 200


# --- Retry-After ----------------------------------------------------------------------------------------------

RATE_LIMITED = [
    ("openai", "/openai/v1/models", {"Authorization": "Bearer {s}"}),
    ("anthropic", "/anthropic/v1/models", {"x-api-key": "{s}", "anthropic-version": "2023-06-01"}),
    ("openrouter", "/openrouter/api/v1/key", {"Authorization": "Bearer {s}"}),
    ("deepseek", "/deepseek/user/balance", {"Authorization": "Bearer {s}"}),
    ("moonshot", "/moonshot/v1/users/me/balance", {"Authorization": "Bearer {s}"}),
    ("azure_openai", "/azure/res/openai/models", {"api-key": "{s}"}),
]


@pytest.mark.parametrize(("provider", "path", "headers"), RATE_LIMITED, ids=[c[0] for c in RATE_LIMITED])
@pytest.mark.parametrize("wait", [0, 0.2, 2.5])
async def test_retry_after_is_never_zero(fresh_sim, http, provider, path, headers, wait):
    secret = f"sk-{provider}-ratelimited-0000000000000000000000000000"
    fresh_sim.set_key(secret, provider, "rate_limited", retry_after=wait)
    r = await http.get(f"{fresh_sim.url}{path}", headers={k: v.format(s=secret) for k, v in headers.items()})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) == max(1, -(-wait // 1))  # whole seconds, rounded up, at least 1


# --- a refused connection -------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


async def test_a_refused_connection_is_a_connection_error_not_a_timeout():
    http = make_http_client(4, 5.0)  # keywatch's own client, over the openai SDK's aiohttp transport
    try:
        url = f"http://127.0.0.1:{closed_port()}"
        with pytest.raises(httpx2.ConnectError):
            await http.get(f"{url}/v1/models")
        result = await AnthropicAdapter(http, {}, timeout=5.0).probe(
            ManagedKey(name="k", provider="anthropic", secret=Secret(ANT_KEY), secret_ref="env:K", base_url=url))
        assert (result.health, result.error_code) == (Health.UNREACHABLE, "connect_error")
        sdk = openai.AsyncOpenAI(api_key=OPENAI_KEY, base_url=f"{url}/v1", http_client=http, max_retries=0)
        with pytest.raises(openai.APIConnectionError) as caught:
            await sdk.models.list()
        assert not isinstance(caught.value, openai.APITimeoutError)
    finally:
        await http.aclose()
