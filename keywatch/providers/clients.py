"""The clients adapters share: one HTTP connection pool, and one adapter per provider in use.

Adapters receive their HTTP client; they never build one. The daemon, the CLI and the usage collector
each build an `AdapterSet` over a client from `make_http_client`.
"""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import httpx2
import structlog

from keywatch.domain import Account
from keywatch.providers import registry
from keywatch.providers.base import ProviderAdapter
from keywatch.providers.lean import LeanHttp
from keywatch.providers.transport import MAX_BODY, BoundedTransport
from keywatch.tls import verified_context

log = structlog.get_logger("keywatch.providers")


class _Session:
    """The aiohttp session every probe's connection comes from, made at first use (inside the loop)."""

    def __init__(self, limits: httpx2.Limits, ssl_context: ssl.SSLContext) -> None:
        self.limits, self.ssl_context = limits, ssl_context
        self.session: aiohttp.ClientSession | None = None

    def __call__(self) -> aiohttp.ClientSession:
        if self.session is None:
            limit = {"limit": self.limits.max_connections} if self.limits.max_connections is not None else {}
            connector = aiohttp.TCPConnector(keepalive_timeout=self.limits.keepalive_expiry, ssl=self.ssl_context,
                                             **limit)  # type: ignore[arg-type]
            # One session carries every key's requests: a cookie one key's answer set must never ride
            # along with another key's request.
            self.session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self.session

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class _SdkTransport(httpx2.AsyncBaseTransport):
    """The openai SDK's aiohttp transport on `session` (through `proxy`, if any), built at the first request
    that needs it: the SDK is imported only then."""

    def __init__(self, *, session: _Session, proxy: httpx2.Proxy | None = None,
                 limits: httpx2.Limits, ssl_context: ssl.SSLContext) -> None:
        self.session, self.proxy, self.limits, self.ssl_context = session, proxy, limits, ssl_context
        self.inner: httpx2.AsyncBaseTransport | None = None

    def _built(self) -> httpx2.AsyncBaseTransport:
        if self.inner is None:
            from openai._vendor.httpx_aiohttp import AiohttpTransport

            self.inner = AiohttpTransport(verify=self.ssl_context, limits=self.limits, proxy=self.proxy,
                                          client=self.session())
        return self.inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self._built().handle_async_request(request)

    async def aclose(self) -> None:
        await self.session.aclose()  # the SDK's transport holds nothing else


class SharedClient(httpx2.AsyncClient):
    """The shared client (see `make_http_client`); `keywatch_lean` is its lean path, None through a proxy."""

    keywatch_lean: LeanHttp | None = None
    _max_body: int = MAX_BODY
    _deadline: float = 10.0

    def __init__(self, *, max_body: int, deadline: float, **kwargs: Any) -> None:
        self._max_body, self._deadline = max_body, deadline  # read by the _init_* hooks super() calls
        super().__init__(**kwargs)

    def _init_transport(self, verify: Any = True, cert: Any = None, trust_env: bool = True,
                        limits: httpx2.Limits = httpx2.Limits(), transport: httpx2.AsyncBaseTransport | None = None,
                        **kwargs: Any) -> httpx2.AsyncBaseTransport:
        if transport is not None:
            return transport
        ssl_context = _tls(verify, cert, trust_env)
        session = _Session(limits, ssl_context)
        self.keywatch_lean = LeanHttp(session, timeout=self._deadline, max_body=self._max_body)
        inner = _SdkTransport(session=session, limits=limits, ssl_context=ssl_context)
        return BoundedTransport(inner, max_body=self._max_body, deadline=self._deadline)

    def _init_proxy_transport(self, proxy: httpx2.Proxy, verify: Any = True, cert: Any = None,
                              trust_env: bool = True, limits: httpx2.Limits = httpx2.Limits(),
                              **kwargs: Any) -> httpx2.AsyncBaseTransport:
        ssl_context = _tls(verify, cert, trust_env)
        inner = _SdkTransport(session=_Session(limits, ssl_context), proxy=proxy, limits=limits,
                              ssl_context=ssl_context)
        return BoundedTransport(inner, max_body=self._max_body, deadline=self._deadline)


def _tls(verify: Any, cert: Any, trust_env: bool) -> ssl.SSLContext:
    if verify is True and cert is None and trust_env:  # the default: the daemon's one context (keywatch.tls)
        return verified_context()
    return httpx2.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)


def make_http_client(concurrency: int, timeout: float, max_body: int = MAX_BODY) -> SharedClient:
    """One connection pool for every probe (the SDKs receive it; they never build their own).

    The client speaks the httpx2 API every adapter and the openai SDK expect, over the openai SDK's own
    aiohttp transport: at thousands of probes a cycle it needs about half the CPU of the default one.
    Every transport it builds (the direct one and any proxy's) is a `BoundedTransport`: no answer is read
    past `max_body` decoded bytes or `timeout` seconds, whichever adapter or SDK asked. Redirects are never
    followed: a provider that answers 3xx is answered as a provider error, its Location never visited.

    Its `keywatch_lean` is the lean probe path (providers.lean) on the same aiohttp session, hence the same
    pool: the zero-token probes take it, everything else goes through the SDKs. The session is made here,
    the SDK's transport around it only at the first request that goes through the client, so a fleet of
    zero-token probes never imports the SDK. A client that sends its requests through a proxy
    (`HTTPS_PROXY` ...) has no lean path, and every probe takes the SDK path.
    """
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = SharedClient(max_body=max_body, deadline=timeout, limits=limits, timeout=httpx2.Timeout(timeout),
                          follow_redirects=False)
    # Proxies from the environment: their transports, not this session, must carry the probes.
    if any(t is not None for t in client._mounts.values()):
        client.keywatch_lean = None
    return client


class AdapterSet:
    """One adapter per provider in use, sharing the HTTP client."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        accounts: dict[str, Account],
        *,
        timeout: float,
        completion_model: str,
    ) -> None:
        self.http = http
        self.accounts = accounts
        self.timeout = timeout
        self.completion_model = completion_model
        self._adapters: dict[str, ProviderAdapter] = {}

    def get(self, provider: str) -> ProviderAdapter:
        adapter = self._adapters.get(provider)
        if adapter is None:
            cls = registry.adapter_class(provider)
            adapter = cls(self.http, self.accounts, timeout=self.timeout, completion_model=self.completion_model)
            self._adapters[provider] = adapter
        return adapter

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            try:
                await adapter.aclose()
            except Exception as exc:
                log.warning("adapter_close_failed", provider=adapter.name, error=type(exc).__name__)
        self._adapters.clear()
