"""What every sink that POSTs shares: its config fields, the request, and how the answer is read.

2xx is a delivery; 429, 5xx and transport errors (connection refused, timeout) are transient and honour
Retry-After; any other 4xx is permanent. Error text never carries the URL or any other secret the sink
holds. A subclass says only what differs: the body (`body`), extra headers (`headers`), where it posts
(`endpoint`) and what a success shows (`delivered`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx2
from pydantic import Field, field_validator

from keywatch.domain import Severity
from keywatch.notify.base import (
    Delivery,
    Message,
    Sink,
    SinkBase,
    SinkConfigBase,
    SinkHttp,
    classify_http,
    mask_url,
    transport_error,
)
from keywatch.settings.types import Duration


class HttpSinkConfig(SinkConfigBase):
    """An HTTP sink's config. Its URL is a secret reference unless the type says otherwise
    (`secret_fields` without "url"); `check_url` adds a type's own rule."""

    secret_fields = ("url",)
    destination_fields = ("url",)

    url: str = Field(
        min_length=1,
        description="A secret reference to the URL (env:NAME, file:/path, credential:NAME), since the URL "
        "itself grants posting",
    )
    timeout: Duration = Field("10s", description="Time one delivery attempt may take")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if "url" in cls.secret_fields and v.startswith(("http://", "https://")):
            raise ValueError(
                f"a {cls.type_name()} URL is a secret; put it in the environment or a file and write "
                "env:NAME, file:/path or credential:NAME here"
            )
        return cls.check_url(v)

    @classmethod
    def check_url(cls, v: str) -> str:
        return v


class HttpSink(SinkBase):
    default_min_interval: ClassVar[float] = 0.0

    def __init__(
        self,
        name: str,
        url: str,
        http: SinkHttp,
        *,
        timeout: float = 10.0,
        min_interval: float | None = None,
        min_severity: Severity = Severity.INFO,
    ) -> None:
        self.name = name
        self.url = url
        self.http = http
        self.timeout = timeout
        self.min_interval = self.default_min_interval if min_interval is None else min_interval
        self.min_severity = min_severity

    @classmethod
    def from_config(cls, config: Any, secrets: Mapping[str, str], http: Any, **extra: Any) -> Sink:
        return cls(
            config.name,
            secrets.get("url", config.url),
            http,
            timeout=config.timeout,
            min_interval=config.min_interval,
            min_severity=Severity(config.min_severity),
            **extra,
        )

    def describe(self) -> str:
        return mask_url(self.url)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never show in an error's text."""
        return (self.url,)

    @property
    def endpoint(self) -> str:
        return self.url

    def body(self, message: Message) -> bytes:
        raise NotImplementedError

    def headers(self, message: Message, body: bytes) -> dict[str, str]:
        """Headers besides Content-Type: application/json."""
        return {}

    def delivered(self, response: httpx2.Response) -> Delivery:
        return Delivery(response.status_code)

    async def send(self, message: Message) -> Delivery:
        body = self.body(message)
        return await self.post(body, self.headers(message, body))

    async def post(self, body: bytes, headers: Mapping[str, str] | None = None) -> Delivery:
        """One POST of a JSON body to `endpoint`; SinkError unless the answer is 2xx."""
        secrets = self.secrets()
        try:
            r = await self.http.post(
                self.endpoint,
                content=body,
                headers={"Content-Type": "application/json", **(headers or {})},
                timeout=self.timeout,
            )
        except httpx2.HTTPError as exc:
            raise transport_error(exc, secrets) from None
        err = classify_http(r.status_code, r.text, r.headers, secrets)
        if err is not None:
            raise err
        return self.delivered(r)
