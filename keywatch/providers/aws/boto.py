"""boto3 for the AWS adapters: clients built once per (service, credentials, region, endpoint) and
reused, with short timeouts and no retries so a probe stays inside the probe timeout; calls run in a
worker thread because boto3 is synchronous.

This is the one module of the package that touches boto3 and botocore, and only inside functions:
it imports without them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Boto:
    """Clients built once per (service, credentials, region, endpoint) and calls run off the event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def client(
        self,
        service: str,
        *,
        access_key_id: str | None,
        secret: str | None,
        region: str,
        endpoint: str | None,
        fingerprint: str = "",
    ) -> Any:
        cache_key = (service, access_key_id or "", fingerprint, region, endpoint or "")
        with self._lock:
            client = self._clients.get(cache_key)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=min(5.0, self.timeout),
                    read_timeout=self.timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    user_agent_extra="keywatch",
                )
                session = boto3.session.Session()  # sessions are not thread-safe; one per client
                client = session.client(
                    service,
                    region_name=region,
                    endpoint_url=endpoint,
                    config=config,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret,
                )
                self._clients[cache_key] = client
        return client

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()


def client_error_parts(exc: BaseException) -> tuple[int | None, str | None, str | None]:
    """(HTTP status, error code, message) of a botocore ClientError."""
    response = getattr(exc, "response", None) or {}
    err = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    return meta.get("HTTPStatusCode"), err.get("Code"), err.get("Message")


def is_client_error(exc: BaseException) -> bool:
    """AWS answered, with an error."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def is_transport_error(exc: BaseException) -> bool:
    """AWS did not answer: no connection, or no answer in time."""
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    return isinstance(
        exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError
    )
