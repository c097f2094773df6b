"""The limits every provider answer is read within, enforced once, under every adapter and SDK.

`BoundedTransport` wraps the shared client's transport. It reads each answer as a stream and stops reading:

- at `max_body` bytes, counted after decompression (and on the wire too, so endless bytes that decode to
  nothing are stopped as well): `BodyTooLarge`, which classifies as provider_error `body_too_large`. A
  declared Content-Length above the cap is refused before the body is read. A gzip bomb never costs more
  than the cap plus one decoded piece (`PIECE`).
- at `deadline` seconds after the request started, whatever arrives meanwhile: a server that sends a byte a
  second never trips a per-read timeout, this one it does (`httpx2.ReadTimeout`, hence unreachable/timeout).

A connection that is refused, reset or whose host does not resolve is an `httpx2.ConnectError`, never a
timeout: the openai SDK's aiohttp transport reports every failed connect as `ConnectTimeout`, which would
tell an operator to look at a slow network when nothing listens there (`not_a_timeout`).

Decoding happens here (the answer handed up carries no Content-Encoding), so the bytes that are counted are
the bytes the adapter gets. Only the encodings asked for (`gzip`, `deflate`) are accepted; anything else, or
a corrupt stream, is `UndecodableBody` (provider_error `bad_encoding`).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import cast

import httpx2

from keywatch.providers.errors import BodyTooLarge, UndecodableBody

MAX_BODY = 1 << 20  # 1 MiB: a provider's answers are a few kB; the longest model list is ~100 kB
PIECE = 64 * 1024  # decoded bytes produced per step of inflating, so a bomb inflates one piece at a time
ACCEPT_ENCODING = "gzip, deflate"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"


class _Inflate:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it), in pieces of at most PIECE bytes."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.first = True
        self.z = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self.z.decompress(data, PIECE)
        except zlib.error as exc:
            if not (self.first and self.encoding == "deflate"):
                raise UndecodableBody(f"the {self.encoding} body is corrupt ({exc})") from None
            self.z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, without the zlib header
            self.first = False
            yield from self.feed(data)
            return
        self.first = False
        while out:
            yield out
            out = self.z.decompress(self.z.unconsumed_tail, PIECE)

    def flush(self) -> bytes:
        try:
            return self.z.flush()
        except zlib.error as exc:
            raise UndecodableBody(f"the {self.encoding} body is corrupt ({exc})") from None


def _decoder(headers: httpx2.Headers, request: httpx2.Request) -> _Inflate | None:
    codings = [c.strip().lower() for v in headers.get_list("content-encoding") for c in v.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in ("gzip", "deflate"):
        raise UndecodableBody(f"content encoding {', '.join(codings)} was not asked for", request=request)
    return _Inflate(codings[0])


class _BoundedBody(httpx2.AsyncByteStream):
    def __init__(
        self, inner: httpx2.AsyncByteStream, decoder: _Inflate | None, *, limit: int, deadline: float,
        seconds: float, request: httpx2.Request,
    ) -> None:
        self.inner, self.decoder, self.limit = inner, decoder, limit
        self.deadline, self.seconds, self.request = deadline, seconds, request

    def _too_large(self, what: str) -> BodyTooLarge:
        return BodyTooLarge(f"the answer {what} {_mib(self.limit)}", request=self.request)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        wire = decoded = 0
        chunks = aiter(self.inner)
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise httpx2.ReadTimeout(
                    f"the answer was not complete within {self.seconds:g}s", request=self.request
                ) from None
            wire += len(chunk)
            if wire > self.limit:
                raise self._too_large("is larger than")
            for piece in self._decode(chunk):
                decoded += len(piece)
                if decoded > self.limit:
                    raise self._too_large("decodes to more than")
                yield piece
        if self.decoder is not None:
            tail = self.decoder.flush()
            if decoded + len(tail) > self.limit:
                raise self._too_large("decodes to more than")
            if tail:
                yield tail

    def _decode(self, chunk: bytes) -> Iterator[bytes]:
        if self.decoder is None:
            yield chunk
            return
        try:
            yield from self.decoder.feed(chunk)
        except UndecodableBody as exc:
            exc.request = self.request
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


def not_a_timeout(exc: BaseException) -> OSError | None:
    """The socket error under a "connect timeout" that was not one (refused, reset, unresolvable), else None.

    Follows the causes down from `exc`: the first OSError met decides (a TimeoutError is one too, and means
    the connect really timed out)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TimeoutError):
            return None
        if isinstance(cur, OSError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


class BoundedTransport(httpx2.AsyncBaseTransport):
    """`inner` with every answer capped at `max_body` decoded bytes and `deadline` seconds end to end."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, max_body: int = MAX_BODY, deadline: float) -> None:
        self.inner = inner
        self.max_body = max_body
        self.deadline = deadline

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING  # what _decoder reads, nothing else
        deadline = asyncio.get_running_loop().time() + self.deadline
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.inner.handle_async_request(request)
        except TimeoutError:
            raise httpx2.ReadTimeout(f"no answer within {self.deadline:g}s", request=request) from None
        except httpx2.ConnectTimeout as exc:
            if not_a_timeout(exc) is None:
                raise
            raise httpx2.ConnectError(str(exc), request=request) from exc
        try:
            declared = int(response.headers.get("content-length", "0"))
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body:
                raise BodyTooLarge(
                    f"the answer declares {declared} bytes, more than {_mib(self.max_body)}", request=request
                )
            decoder = _decoder(response.headers, request)
        except BaseException:
            await response.aclose()
            raise
        headers = response.headers
        if decoder is not None:  # handed up decoded: the length and encoding on the wire no longer apply
            headers = httpx2.Headers(
                [(k, v) for k, v in headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
            )
        return httpx2.Response(
            status_code=response.status_code,
            headers=headers,
            stream=_BoundedBody(cast(httpx2.AsyncByteStream, response.stream), decoder, limit=self.max_body,
                                deadline=deadline, seconds=self.deadline, request=request),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()
