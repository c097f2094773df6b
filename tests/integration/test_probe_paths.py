"""The lean probe path over real HTTP: one GET on the pool the SDKs use, each key's own header, nothing
carried from one key's answer to another's request, deadlines that hold without one timer per request,
and the SDK path wherever the lean one cannot go (a proxy)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from keywatch.domain import Health, ManagedKey, Secret
from keywatch.providers.clients import make_http_client
from keywatch.providers.lean import Deadlines, lean_of
from keywatch.providers.openai import OpenAIAdapter


class Recorder:
    """A tiny OpenAI-shaped server that remembers what each request carried and on which connection."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str | int | None]] = []
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/v1/moved", self.moved)
        self.app.router.add_get("/elsewhere", self.models)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.seen.append({"path": request.path, "auth": request.headers.get("Authorization"),
                          "cookie": request.headers.get("Cookie"), "port": peer[1] if peer else None,
                          "ua": request.headers.get("User-Agent")})
        response = web.json_response({"object": "list", "data": []})
        response.set_cookie("session", "from-" + (request.headers.get("Authorization") or "")[-6:])
        return response

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{self.url}/elsewhere")

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.start()
    yield rec
    await rec.stop()


def key(url: str, name: str = "k") -> ManagedKey:
    return ManagedKey(name=name, provider="openai", secret=Secret("sk-proj-" + secrets.token_urlsafe(30)),
                      secret_ref="env:K", base_url=f"{url}/v1")


async def test_lean_probes_and_sdk_calls_share_one_pool_and_keep_connections_alive(server: Recorder) -> None:
    http = make_http_client(1, 5.0)  # one connection at most: every request must reuse it
    adapter = OpenAIAdapter(http, timeout=5.0)
    try:
        assert lean_of(http) is not None
        keys = [key(server.url, f"k{i}") for i in range(3)]
        results = [await adapter.probe(k) for k in keys]
        sdk = await http.get(f"{server.url}/v1/models")  # a management-style call through httpx2
        assert sdk.status_code == 200
    finally:
        await adapter.aclose()
        await http.aclose()
    assert [r.health for r in results] == [Health.HEALTHY] * 3
    assert len({s["port"] for s in server.seen}) == 1, server.seen  # one connection for lean and SDK alike
    assert [s["auth"] for s in server.seen[:3]] == [f"Bearer {k.secret.reveal()}" for k in keys if k.secret]
    assert str(server.seen[0]["ua"]).startswith("keywatch/")  # the lean path made the probes


async def test_a_cookie_set_for_one_key_never_rides_with_the_next(server: Recorder) -> None:
    url = server.url.replace("127.0.0.1", "localhost")  # a host name: a cookie jar keeps no cookies for IPs
    http = make_http_client(2, 5.0)
    adapter = OpenAIAdapter(http, timeout=5.0)
    try:
        for i in range(2):
            assert (await adapter.probe(key(url, f"k{i}"))).health is Health.HEALTHY
        await http.get(f"{url}/v1/models")
    finally:
        await adapter.aclose()
        await http.aclose()
    assert [s["cookie"] for s in server.seen] == [None, None, None]


async def test_a_redirect_is_reported_not_followed(server: Recorder) -> None:
    http = make_http_client(2, 5.0)
    lean = lean_of(http)
    assert lean is not None
    try:
        answer = await lean.get(f"{server.url}/v1/moved", headers={"Authorization": "Bearer sk-x"})
    finally:
        await http.aclose()
    assert answer.status_code == 302 and answer.is_redirect
    assert server.seen == []  # the Location was never visited


async def test_behind_a_proxy_the_probe_takes_the_sdk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    http = make_http_client(2, 5.0)
    try:
        assert lean_of(http) is None
    finally:
        await http.aclose()


async def test_a_deadline_ends_the_wait_with_a_timeout() -> None:
    deadlines = Deadlines(resolution=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError), deadlines.limit(0.1):
        await asyncio.sleep(5)
    assert 0.09 <= loop.time() - started < 1.0
    await asyncio.sleep(0.05)  # no stray cancellation is left for the task's next await
    assert deadlines.pending() == 0


async def test_an_outside_cancel_goes_through_and_a_finished_wait_is_not_cancelled_later() -> None:
    deadlines = Deadlines(resolution=0.02)

    async def waits() -> None:
        with deadlines.limit(10):
            await asyncio.sleep(5)

    task = asyncio.create_task(waits())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    with deadlines.limit(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.2)  # well past that deadline: the finished block is not cancelled after the fact


async def test_a_thousand_waits_share_one_timer() -> None:
    deadlines = Deadlines(resolution=0.02)
    loop = asyncio.get_running_loop()
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    gate = asyncio.Event()
    counted: list[int] = []

    async def waits() -> None:
        with deadlines.limit(5):
            await gate.wait()

    tasks = [asyncio.create_task(waits()) for _ in range(1000)]
    await asyncio.sleep(0)
    counted.append(len(loop._scheduled) - before)  # type: ignore[attr-defined]
    gate.set()
    await asyncio.gather(*tasks)
    assert counted == [1]


SDK_FREE = r"""
import asyncio, sys
from keywatch.domain import ManagedKey, Secret
from keywatch.providers.clients import AdapterSet, make_http_client

async def main(url):
    http = make_http_client(4, 5.0)
    adapters = AdapterSet(http, {}, timeout=5.0, completion_model="gpt-4o-mini")
    key = ManagedKey(name="k", provider="openai", secret=Secret("sk-proj-" + "a" * 40), secret_ref="env:K",
                     base_url=url + "/v1")
    first = await adapters.get("openai").probe(key)
    loaded = [m for m in ("openai", "rich", "pygments") if m in sys.modules]
    completion = ManagedKey(name="c", provider="openai", secret=Secret("sk-proj-" + "b" * 40), secret_ref="env:C",
                            base_url=url + "/v1", probe="completion")
    await adapters.get("openai").probe(completion)
    print(first.health, ",".join(loaded) or "-", "openai" in sys.modules)
    await adapters.aclose()
    await http.aclose()

asyncio.run(main(sys.argv[1]))
"""


async def test_a_zero_token_probe_never_loads_the_sdk_and_a_completion_probe_does(server: Recorder) -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SDK_FREE, server.url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().split() == ["healthy", "-", "True"]
