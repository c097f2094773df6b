"""Arbitrary bodies and headers thrown at each leak receiver of a running daemon: never a 5xx, never a crash,
never an action on a key, and the daemon keeps answering."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywatch.sim.routes import github as gh
from tests.integration.leaks_harness import HOOK_SECRET, LeakHarness, start, stop

PATHS = ["/hooks/github/secret-scanning", "/hooks/github/partner", "/api/v1/leaks"]
HEADER_NAMES = [
    "Content-Type",
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-Hub-Signature-256",
    "Authorization",
    "Github-Public-Key-Identifier",
    "Github-Public-Key-Signature",
    "X-Keywatch-Signature-256",
    "Content-Encoding",
    "Transfer-Encoding",
]
header_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "action",
                    "alert",
                    "repository",
                    "number",
                    "full_name",
                    "token",
                    "type",
                    "secret",
                    "fingerprint",
                    "location",
                    "url",
                    "source",
                    "confidence",
                ]
            )
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


class Loop:
    """The daemon on an event loop of its own thread, so hypothesis drives it from plain synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loop, LeakHarness]]:
    loop = Loop()
    h = loop.run(start(Path(tmp_path_factory.mktemp("props")), 3, tag="PRP"))
    loop.run(h.cycles(1))
    yield loop, h
    loop.run(stop(h))
    loop.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=2048), json_like.map(lambda v: json.dumps(v).encode()), st.just(b"x" * 70000))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(PATHS),
    body=bodies(),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=6),
    signed=st.booleans(),
    json_type=st.booleans(),
)
def _throw(daemon, path: str, body: bytes, headers: dict[str, str], signed: bool, json_type: bool) -> None:
    _, h = daemon
    headers = {k: v for k, v in headers.items() if k not in ("Content-Encoding", "Transfer-Encoding")} | (
        {k: v for k, v in headers.items() if k in ("Content-Encoding",) and v == "gzip"}
    )
    if json_type:
        headers["Content-Type"] = "application/json"
    if signed and path == PATHS[0]:  # past the signature: the parser and the event logic get the body
        headers.update(gh.webhook(HOOK_SECRET, body)[1])
    if signed and path == PATHS[1]:
        headers.update(gh.partner_report(h.sim.state, body)[1])
    status = post(h.url + path, body, headers)
    assert status < 500, (path, status)


def test_arbitrary_requests_never_get_a_5xx_nor_act_on_a_key(daemon) -> None:
    loop, h = daemon
    _throw(daemon)
    loop.run(h.leaks.idle())
    assert all(not h.disabled_at_provider(n) for n in h.secrets)
    assert all(h.admin(n) == "active" for n in h.secrets)
    with urllib.request.urlopen(h.url + "/healthz", timeout=5) as r:
        assert r.status == 200
