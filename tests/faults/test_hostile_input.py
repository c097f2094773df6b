"""Property-based: whatever a provider (or something posing as one) answers, every probe parser returns a
result in the health vocabulary, a 5xx never blames the key, and no secret is echoed; the rate-limit
header parsers never raise; the daemon's HTTP endpoints answer anything thrown at them without a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywatch.domain import Health, ManagedKey, ProbeResult, Secret
from keywatch.providers import registry
from keywatch.providers.errors import anthropic_ratelimit, openai_ratelimit, retry_after
from keywatch.redact import REGISTRY
from keywatch.web import WebServer

SECRET = "sk-proj-" + "Hostile0123456789abcdefghij" * 2 + "ZZ9q"
PROVIDERS = [p for p in registry.names() if not p.startswith("aws") and p != "azure_openai"]
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
# Bodies shaped like the documented ones, with values of any type where a number or a word belongs.
shaped = st.fixed_dictionaries({}, optional={
    "error": st.fixed_dictionaries({}, optional={"code": json_values, "type": json_values, "message": json_values,
                                                 "details": json_values}),
    "data": json_values, "balance_infos": json_values, "is_available": json_values,
    "available_balance": json_values, "object": json_values, "type": json_values,
})
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    st.just(("[" * 5000 + "]" * 5000).encode()),  # deeply nested
    st.just(f'{{"error": {{"message": "Incorrect API key provided: {SECRET}"}}}}'.encode()),  # echoes the key
)
header_names = st.sampled_from([
    "retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-reset-tokens", "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-reset", "content-type", "x-should-retry",
])
headers = st.dictionaries(header_names, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
                          max_size=6)
statuses = st.sampled_from([200, 201, 204, 400, 401, 402, 403, 404, 408, 409, 422, 429, 500, 502, 503, 529]) | \
    st.integers(100, 599)


def probe(provider: str, status: int, hdrs: dict[str, str], body: bytes) -> ProbeResult:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": "application/json", **hdrs}, content=body)

    async def run() -> ProbeResult:
        async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
            adapter = registry.adapter_class(provider)(http, {}, timeout=2, completion_model="gpt-4o-mini")
            key = ManagedKey("hostile", provider, Secret(SECRET), "env:KW_HOSTILE",
                             base_url="http://provider.test/v1" if provider == "openai_compatible" else None)
            try:
                return await adapter.probe(key)
            finally:
                await adapter.aclose()

    return asyncio.run(run())


@pytest.fixture(autouse=True, scope="module")
def secret_known() -> None:
    REGISTRY.add([SECRET])  # as the daemon does for every loaded key


@pytest.mark.parametrize("provider", PROVIDERS)
@SETTINGS
@given(status=statuses, hdrs=headers, body=bodies)
def test_every_probe_parser_survives_any_answer(provider: str, status: int, hdrs: dict[str, str], body: bytes) -> None:
    r = probe(provider, status, hdrs, body)
    assert isinstance(r, ProbeResult) and r.health in Health and r.health is not Health.UNKNOWN
    if status >= 500:
        assert not r.health.blames_key, (status, r)
    assert SECRET not in repr(r) and SECRET[8:30] not in repr(r)


@SETTINGS
@given(hdrs=headers)
def test_rate_limit_header_parsers_never_raise(hdrs: dict[str, str]) -> None:
    for parse in (openai_ratelimit, anthropic_ratelimit):
        rl = parse(hdrs)
        for value in (rl.as_dict().values() if rl else ()):
            assert value is None or value >= 0
    ra = retry_after(hdrs)
    assert ra is None or ra >= 0


class ServedDaemonEndpoints:
    """The daemon's HTTP server (/metrics, /healthz, /readyz) on its own loop in a thread."""

    def __enter__(self) -> ServedDaemonEndpoints:
        self.loop = asyncio.new_event_loop()
        self.server = WebServer("127.0.0.1:0", lambda: iter([b"# metrics\n"]), lambda: (True, {"ok": True}))
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def endpoints():
    with ServedDaemonEndpoints() as e:
        yield e


paths = st.sampled_from(["/metrics", "/healthz", "/readyz", "/", "/api/v1/leaks", "/../etc/passwd", "/%00",
                         "/metrics?x=" + "a" * 3000]) | st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                                                 max_size=60).map(lambda t: "/" + t)


@SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]), path=paths,
       hdrs=st.dictionaries(st.sampled_from(["Content-Type", "Content-Length-X", "X-Hub-Signature-256", "Accept",
                                             "Authorization", "Transfer-Encoding-X"]),
                            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40), max_size=4),
       body=st.binary(max_size=2000))
def test_the_daemon_endpoints_answer_anything_without_a_5xx(endpoints, method: str, path: str,
                                                            hdrs: dict[str, str], body: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", endpoints.server.bound_port, timeout=5)
    try:
        try:
            conn.request(method, path, body=body, headers=hdrs)
        except (http.client.InvalidURL, ValueError):
            return  # the client itself refuses to send it
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status < 500, (method, path, status)
