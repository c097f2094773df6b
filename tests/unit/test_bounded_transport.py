"""The shared client's transport reads at most `max_body` decoded bytes and `deadline` seconds of any answer."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import httpx2
import pytest

from keywatch.domain import Health
from keywatch.providers.errors import BodyTooLarge, UndecodableBody, classify_transport_error
from keywatch.providers.transport import BoundedTransport

CAP = 64 * 1024


class Stream(httpx2.AsyncByteStream):
    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def raw(data: bytes) -> Stream:
    """The bytes as they come off the wire (a Response given `content=` would decode them itself)."""

    async def once() -> AsyncIterator[bytes]:
        yield data

    return Stream(once())


def client(answer, *, deadline: float = 2.0) -> httpx2.AsyncClient:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return answer(request)

    return httpx2.AsyncClient(transport=BoundedTransport(httpx2.MockTransport(handler), max_body=CAP,
                                                         deadline=deadline))


async def get(answer, **kw) -> httpx2.Response:
    async with client(answer, **kw) as http:
        return await http.get("http://provider.test/v1/models")


async def test_a_small_gzip_answer_is_handed_up_decoded() -> None:
    body = b'{"data": []}'
    gz = gzip.compress(body)
    r = await get(lambda req: httpx2.Response(200, headers={"Content-Encoding": "gzip"}, stream=raw(gz)))
    assert r.content == body and "content-encoding" not in r.headers


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_deflate_is_read_wrapped_or_raw(wbits: int) -> None:
    c = zlib.compressobj(wbits=wbits)
    data = c.compress(b"[1, 2, 3]") + c.flush()
    r = await get(lambda req: httpx2.Response(200, headers={"Content-Encoding": "deflate"}, stream=raw(data)))
    assert r.content == b"[1, 2, 3]"


async def test_only_the_encodings_asked_for_are_requested() -> None:
    seen: list[str] = []

    def answer(req: httpx2.Request) -> httpx2.Response:
        seen.append(req.headers["accept-encoding"])
        return httpx2.Response(200, content=b"{}")

    await get(answer)
    assert seen == ["gzip, deflate"]


async def test_a_gzip_bomb_is_stopped_on_decoded_bytes() -> None:
    bomb = gzip.compress(b" " * (64 << 20))  # 64 kB on the wire, 64 MiB decoded
    assert len(bomb) < CAP
    with pytest.raises(BodyTooLarge, match="decodes to more than"):
        await get(lambda req: httpx2.Response(200, headers={"Content-Encoding": "gzip"}, stream=raw(bomb)))


async def test_an_endless_stream_is_stopped_at_the_cap_and_closed() -> None:
    async def forever() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 4096

    stream = Stream(forever())
    with pytest.raises(BodyTooLarge) as caught:
        await get(lambda req: httpx2.Response(200, stream=stream))
    assert stream.closed
    assert classify_transport_error(caught.value) == (Health.PROVIDER_ERROR, "body_too_large")


async def test_endless_bytes_after_a_gzip_stream_count_on_the_wire() -> None:
    async def trailing() -> AsyncIterator[bytes]:
        yield gzip.compress(b"{}")
        while True:
            yield b"\0" * 4096  # decodes to nothing: only the wire count stops it

    with pytest.raises(BodyTooLarge, match="larger than"):
        await get(lambda req: httpx2.Response(200, headers={"Content-Encoding": "gzip"}, stream=Stream(trailing())))


async def test_a_declared_length_above_the_cap_is_refused_unread() -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""

    with pytest.raises(BodyTooLarge, match="declares"):
        await get(lambda req: httpx2.Response(200, headers={"Content-Length": str(CAP + 1)}, stream=Stream(never())))


@pytest.mark.parametrize(("encoding", "body"), [("br", b"\x0b\x02\x80{}\x03"), ("gzip", b"not gzip at all"),
                                                ("gzip, gzip", b"")])
async def test_an_encoding_not_asked_for_or_corrupt_is_a_provider_error(encoding: str, body: bytes) -> None:
    with pytest.raises(UndecodableBody) as caught:
        await get(lambda req: httpx2.Response(200, headers={"Content-Encoding": encoding}, stream=raw(body)))
    assert classify_transport_error(caught.value) == (Health.PROVIDER_ERROR, "bad_encoding")


async def test_a_trickle_ends_at_the_deadline_however_often_a_byte_arrives() -> None:
    async def trickle() -> AsyncIterator[bytes]:
        while True:
            await asyncio.sleep(0.05)
            yield b" "

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(httpx2.ReadTimeout) as caught:
        await get(lambda req: httpx2.Response(200, stream=Stream(trickle())), deadline=0.5)
    assert 0.5 <= loop.time() - started < 1.0
    assert classify_transport_error(caught.value) == (Health.UNREACHABLE, "timeout")
