"""The clients adapters share: one HTTP connection pool, and one adapter per provider in use.

Adapters receive their HTTP client; they never build one. The daemon, the CLI and the usage collector
each build an `AdapterSet` over a client from `make_http_client`.
"""

from __future__ import annotations

from typing import Any

import httpx2
import structlog

from keywatch.domain import Account
from keywatch.providers import registry
from keywatch.providers.base import ProviderAdapter
from keywatch.providers.lean import LeanHttp
from keywatch.providers.transport import MAX_BODY, BoundedTransport

log = structlog.get_logger("keywatch.providers")


def make_http_client(concurrency: int, timeout: float, max_body: int = MAX_BODY) -> httpx2.AsyncClient:
    """One connection pool for every probe (the SDKs receive it; they never build their own).

    The client speaks the httpx2 API every adapter and the openai SDK expect, over the openai SDK's own
    aiohttp transport: at thousands of probes a cycle it needs about half the CPU of the default one.
    Every transport it builds (the direct one and any proxy's) is a `BoundedTransport`: no answer is read
    past `max_body` decoded bytes or `timeout` seconds, whichever adapter or SDK asked. Redirects are never
    followed: a provider that answers 3xx is answered as a provider error, its Location never visited.

    Its `keywatch_lean` is the lean probe path (providers.lean) on the same aiohttp session, hence the same
    pool: the zero-token probes take it, everything else goes through the SDKs. A client that sends its
    requests through a proxy (`HTTPS_PROXY` ...) has none, and every probe takes the SDK path.
    """
    import aiohttp
    import openai

    class BoundedClient(openai.DefaultAioHttpClient):  # type: ignore[misc,valid-type]
        keywatch_lean: LeanHttp | None = None

        def _init_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
            inner = super()._init_transport(*args, **kwargs)

            def session() -> aiohttp.ClientSession:
                if not isinstance(inner.client, aiohttp.ClientSession):  # made at first use, in the loop
                    made = inner.get_client()
                    # One session carries every key's requests: a cookie one key's answer set must never
                    # ride along with another key's request.
                    made._cookie_jar = aiohttp.DummyCookieJar()
                    inner.client = made
                return inner.client

            if hasattr(inner, "get_client"):
                self.keywatch_lean = LeanHttp(session, timeout=timeout, max_body=max_body)
            return BoundedTransport(inner, max_body=max_body, deadline=timeout)

        def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> httpx2.AsyncBaseTransport:
            inner = super()._init_proxy_transport(*args, **kwargs)
            return BoundedTransport(inner, max_body=max_body, deadline=timeout)

    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    client = BoundedClient(limits=limits, timeout=httpx2.Timeout(timeout), follow_redirects=False)
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
