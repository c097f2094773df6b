"""/metrics over HTTP: a rendering kept between scrapes (at most MAX_AGE old), gzip when asked, complete
bodies while a cycle replaces states, and the per-key modes with the series budget the docs promise."""

from __future__ import annotations

import asyncio
import gzip
import re
import sys
import time
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keywatch import metrics as metrics_module
from keywatch.domain import Health, ManagedKey, ProbeResult, RateLimit, Secret
from keywatch.metrics import MAX_AGE, SEGMENT, Metrics
from keywatch.state import StateTracker
from keywatch.web import WebServer

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "alerts-and-metrics.md"


def key(name: str, **labels: str) -> ManagedKey:
    return ManagedKey(name=name, provider="openai", secret=Secret(f"sk-proj-{name}-aaaaaaaaaaaaaaaaaaaa"),
                      secret_ref="env:X", labels=labels)


def result(name: str, health: Health, at: datetime, **kw) -> ProbeResult:
    return ProbeResult(key=name, provider="openai", health=health, checked_at=at, latency_ms=12.0, **kw)


def fleet(n: int) -> tuple[StateTracker, Metrics]:
    t = StateTracker()
    t.sync_inventory([key(f"k{i:05d}", team=f"t{i % 7}") for i in range(n)])
    m = Metrics(CollectorRegistry())
    m.attach_state(t.snapshot)
    return t, m


def samples(text: str, prefix: str = "keywatch_key_") -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith(prefix)}


def up(text: str, name: str) -> float | None:
    return samples(text).get(("keywatch_key_up", (("key", name), ("provider", "openai"))))


async def scrape(m: Metrics, gzip_: bool = False) -> str:
    blocks, encoding = await m.prepared(gzip_)
    body = b"".join(blocks)
    return (gzip.decompress(body) if encoding == "gzip" else body).decode()


@pytest.fixture
async def served():
    servers = []

    async def serve(m: Metrics) -> str:
        server = WebServer("127.0.0.1:0", m.exposition_chunks, lambda: (True, {}))
        await server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.bound_port}/metrics"

    yield serve
    for server in servers:
        await server.stop()


async def test_gzip_body_decodes_to_the_same_text_and_plain_has_a_length(served) -> None:
    t, m = fleet(3 * SEGMENT + 7)
    t.apply(result("k00001", Health.RATE_LIMITED, T0, ratelimit=RateLimit(requests_remaining=3)))
    url = await served(m)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url, headers={"Accept-Encoding": "identity"}) as r:
            plain = await r.read()
            assert r.headers.get("Content-Encoding") is None
            assert int(r.headers["Content-Length"]) == len(plain)
        async with session.get(url, headers={"Accept-Encoding": "gzip"}) as r:
            compressed = await r.read()
            assert r.headers["Content-Encoding"] == "gzip"
            assert r.headers["Content-Type"].startswith("text/plain")
    assert len(compressed) * 10 < len(plain)
    # One gzip member: a single decompressor (as Prometheus' and aiohttp's) reads it to the end.
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert d.decompress(compressed) == gzip.decompress(compressed)
    assert d.eof and not d.unused_data
    # The registry part is read at every scrape, the per-key part is the same rendering: same samples.
    assert samples(gzip.decompress(compressed).decode()) == samples(plain.decode())
    assert samples(plain.decode(), "keywatch_") == samples(m.exposition().decode(), "keywatch_")
    async with aiohttp.ClientSession() as session, session.get(url) as r:  # it decompresses by itself
        assert samples((await r.read()).decode()) == samples(plain.decode())


async def test_a_probed_key_shows_within_the_staleness_bound(served) -> None:
    t, m = fleet(10)
    url = await served(m)
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as r:
            assert up(await r.text(), "k00003") == 0.0
        t.apply(result("k00003", Health.HEALTHY, T0))
        changed_at = time.monotonic()
        while True:
            asked_at = time.monotonic()
            async with session.get(url) as r:
                text = await r.text()
            if up(text, "k00003") == 1.0:
                break
            # a scrape that arrived more than MAX_AGE after the probe must show it, however slow the machine
            assert asked_at - changed_at <= MAX_AGE, "a scrape later than the staleness bound missed the probe"
            await asyncio.sleep(0.05)
        counts = samples(text, "keywatch_keys_by_health")
        assert counts[("keywatch_keys_by_health", (("health", "healthy"), ("provider", "openai")))] == 1
        # The registry's own metrics are read at every scrape, never from the kept rendering.
        m.config_reloads.labels("applied").inc()
        async with session.get(url) as r:
            assert 'keywatch_config_reloads_total{result="applied"} 1.0' in await r.text()


async def test_a_removed_key_disappears_within_the_staleness_bound() -> None:
    t, m = fleet(SEGMENT + 5)
    names = [f"k{i:05d}" for i in range(SEGMENT + 5)]
    assert up(await scrape(m), "k00002") == 0.0
    t.sync_inventory([key(n, team="x") for n in names if n != "k00002"])
    await asyncio.sleep(MAX_AGE + 0.05)
    text = await scrape(m)
    assert 'key="k00002"' not in text
    assert up(text, names[-1]) == 0.0
    assert samples(text, "keywatch_keys_by_health")[
        ("keywatch_keys_by_health", (("health", "unknown"), ("provider", "openai")))] == len(names) - 1
    assert 'label_team="x"' in text and 'label_team="t1"' not in text  # changed labels re-render the key


async def test_a_scrape_during_a_cycle_is_complete_and_parses() -> None:
    n = 2 * SEGMENT + 3
    t, m = fleet(n)
    names = [f"k{i:05d}" for i in range(n)]
    stop = asyncio.Event()

    async def cycle() -> None:  # probes land one by one, as the prober's callbacks apply them
        i = 0
        while not stop.is_set():
            t.apply(result(names[i % n], (Health.HEALTHY, Health.INVALID)[(i // n) % 2], T0 + timedelta(seconds=i)))
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0)

    task = asyncio.create_task(cycle())
    try:
        bodies = []
        for _ in range(4):  # at least 2.4 x MAX_AGE in all: across two refreshes or more, however slow a scrape is
            for gz in (False, True):
                bodies.append(await scrape(m, gz))
            await asyncio.sleep(MAX_AGE * 0.6)
    finally:
        stop.set()
        await task
    for text in bodies:
        got = samples(text, "keywatch_")
        ups = {dict(labels)["key"] for name, labels in got if name == "keywatch_key_up"}
        assert ups == set(names)
        health = [v for (name, _), v in got.items() if name == "keywatch_key_health"]
        assert len(health) == 8 * n and sum(health) == n
        assert sum(v for (name, _), v in got.items() if name == "keywatch_keys_by_health") == n


@pytest.mark.parametrize("mode", ["all", "minimal", "none"])
async def test_per_key_modes_serve_what_the_registry_collects(mode: str) -> None:
    t, m = fleet(SEGMENT + 2)
    t.apply(result("k00000", Health.RATE_LIMITED, T0, ratelimit=RateLimit(requests_remaining=0, tokens_remaining=5)))
    t.apply(result("k00001", Health.INVALID, T0 + timedelta(seconds=1.5)))
    await scrape(m)  # a rendering of the previous mode is kept: a new mode must not reuse it
    m.set_per_key(mode)
    served = await scrape(m)
    generic = generate_latest(m.registry).decode()
    assert samples(served) == samples(generic) == samples(m.exposition().decode())
    assert samples(served, "keywatch_keys_") == samples(generic, "keywatch_keys_")
    if mode == "none":
        assert "keywatch_key_" not in served and "keywatch_keys_by_health" in served


def budget_table() -> dict[str, tuple[tuple[int, int], int, int]]:
    """docs/alerts-and-metrics.md#series-budget: family -> ((least, most) in `all`, `minimal`, `none`)."""
    section = DOCS.read_text().split("### Series budget", 1)[1].split("\n\n", 2)[1]
    out = {}
    for row in section.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if not cells[0].startswith("`"):
            continue

        def count(cell: str) -> list[int]:
            return [int(x) for x in re.findall(r"\d+", cell.split("(")[0])] or [0]

        every = count(cells[1])
        out[cells[0].strip("`")] = ((every[0], every[-1]), count(cells[2])[0], count(cells[3])[0])
    return out


@pytest.mark.parametrize("mode", ["all", "minimal", "none"])
async def test_series_per_key_are_the_documented_budget(mode: str) -> None:
    table = budget_table()
    assert "keywatch_key_up" in table and "keywatch_key_ratelimit_remaining" in table
    t, m = fleet(2)
    t.apply(result("k00000", Health.RATE_LIMITED, T0, ratelimit=RateLimit(requests_remaining=0, tokens_remaining=5)))
    t.apply(result("k00001", Health.HEALTHY, T0))  # no rate-limit headers
    m.set_per_key(mode)
    per_key: dict[str, dict[str, int]] = {"k00000": {}, "k00001": {}}
    for (name, labels), _ in samples(await scrape(m)).items():
        k = dict(labels)["key"]
        per_key[k][name] = per_key[k].get(name, 0) + 1
    column = {"all": 0, "minimal": 1, "none": 2}[mode]
    for k, counts in per_key.items():
        for family, (every, minimal, none) in table.items():
            documented = (every, (minimal, minimal), (none, none))[column]
            assert documented[0] <= counts.get(family, 0) <= documented[1], (k, family, counts)
        assert set(counts) <= set(table)
    most = {"all": 20, "minimal": 5, "none": 0}[mode]
    assert sum(per_key["k00000"].values()) == most
    assert sum(per_key["k00001"].values()) == most - (2 if mode == "all" else 0)


async def test_concurrent_scrapes_share_one_refresh(monkeypatch) -> None:
    t, m = fleet(3 * SEGMENT)
    renders = []
    original = metrics_module.KeyStateRenderer._render

    def counted(self, run):
        renders.append(len(run))
        return original(self, run)

    monkeypatch.setattr(metrics_module.KeyStateRenderer, "_render", counted)
    texts = await asyncio.gather(*(scrape(m) for _ in range(5)))
    assert len(set(texts)) == 1
    assert sum(renders) == 3 * SEGMENT  # every key rendered once for the five scrapes
    t.apply(result("k00007", Health.HEALTHY, T0))
    await asyncio.sleep(MAX_AGE + 0.05)
    await scrape(m)
    assert sum(renders) == 4 * SEGMENT  # only the run holding the probed key was rendered again


class RenderWatch:
    """The runs rendered while a scrape waited (`inside`) and those rendered behind the scrapes (`behind`)."""

    def __init__(self, monkeypatch) -> None:
        self.waiting, self.inside, self.behind = False, [], []
        original = metrics_module.KeyStateRenderer._render

        def watched(renderer, run):
            (self.inside if self.waiting else self.behind).append(len(run))
            return original(renderer, run)

        monkeypatch.setattr(metrics_module.KeyStateRenderer, "_render", watched)

    async def scrape(self, m: Metrics, scraper: str | None = None) -> str:
        """A gzip scrape, as Prometheus asks: once a rendering is kept, nothing to wait for."""
        self.waiting = True
        try:
            blocks, _ = await m.prepared(True, scraper)
        finally:
            self.waiting = False
        return gzip.decompress(b"".join(blocks)).decode()


async def test_a_scraper_that_comes_often_never_waits_for_a_render(monkeypatch) -> None:
    t, m = fleet(2 * SEGMENT)
    await scrape(m)
    watch = RenderWatch(monkeypatch)
    for i in range(8):
        t.apply(result("k00003", (Health.HEALTHY, Health.INVALID)[i % 2], T0 + timedelta(seconds=i)))
        await watch.scrape(m)
        await asyncio.sleep(MAX_AGE / 3)
    assert watch.behind and not watch.inside


async def test_a_scraper_at_a_steady_interval_finds_its_rendering_made(monkeypatch) -> None:
    """As Prometheus scrapes (every 15 s or so): once its interval is seen, the runs that changed are rendered
    before its next scrape comes, so the scrape does not wait for them, and it still shows every change made
    more than MAX_AGE before it."""
    t, m = fleet(2 * SEGMENT)
    watch = RenderWatch(monkeypatch)
    # The refresh starts as early as the staleness bound lets it (here a render takes milliseconds, but a
    # loaded machine may hold the event loop or the worker thread back for longer than the usual lead).
    monkeypatch.setattr(metrics_module._ScrapeCache, "_lead", lambda self: 0.8 * MAX_AGE)
    interval, health = 3 * MAX_AGE, "unknown"
    for i in range(5):
        if i == 2:  # its interval is known from here on
            watch.inside.clear()
            watch.behind.clear()
        text = await watch.scrape(m, scraper="10.0.0.7")
        assert samples(text)[
            ("keywatch_key_health", (("health", health), ("key", "k00003"), ("provider", "openai")))] == 1.0
        health = ("healthy", "invalid")[i % 2]
        t.apply(result("k00003", Health(health), T0 + timedelta(seconds=i)))
        await asyncio.sleep(interval)
    assert watch.behind and not watch.inside


@pytest.mark.parametrize("sizes", [[0, 1, 5], [70_000, 3, 200_000], [17] * 40])
def test_pieces_deflated_apart_are_one_gzip_member_with_the_whole_texts_crc(sizes: list[int]) -> None:
    texts = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    pieces = [metrics_module._Piece(t) for t in texts if t]
    rendering = metrics_module._Rendering(pieces, b"fleet\n", time.monotonic(), "all")
    body = b"".join(rendering.gzip(b"head\n"))
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # one member, its CRC and length checked by zlib itself
    assert d.decompress(body) == b"".join(texts) + b"fleet\nhead\n"
    assert d.eof and not d.unused_data


async def test_a_plain_text_scrape_is_inflated_as_it_is_sent_never_whole(served) -> None:
    """A scraper that does not take gzip (curl, a script) gets the whole text with its length, while the
    daemon holds a small part of it at a time (81 MB of text at 50,000 keys). What the peak counts beside it
    is the sockets' buffers, the client's included (about 1 MB)."""
    _tracker, m = fleet(10 * SEGMENT)
    url = await served(m)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(url, headers={"Accept-Encoding": "gzip"}) as r:  # the rendering, kept
            expected = gzip.decompress(await r.read())
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            size, crc = 0, 0
            async with http.get(url, headers={"Accept-Encoding": "identity"}) as r:
                assert r.headers.get("Content-Encoding") is None
                length = int(r.headers["Content-Length"])
                async for chunk in r.content.iter_chunked(1 << 16):
                    size, crc = size + len(chunk), zlib.crc32(chunk, crc)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert size == length == len(expected) and crc == zlib.crc32(expected)
    assert len(expected) > 5_000_000 and peak * 3 < len(expected), (peak, len(expected))


async def test_what_a_scrape_keeps_is_a_fraction_of_the_text() -> None:
    """Between scrapes the daemon keeps the per-key text deflated, not the text itself (at 10,000 keys the
    text is about 16 MB)."""
    t, m = fleet(4 * SEGMENT)
    for i in range(0, 4 * SEGMENT, 3):
        t.apply(result(f"k{i:05d}", Health.RATE_LIMITED, T0 + timedelta(seconds=i),
                       ratelimit=RateLimit(requests_remaining=i, tokens_remaining=i * 10)))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        text = await scrape(m, gzip_=True)
        kept = tracemalloc.get_traced_memory()[0] - before - sys.getsizeof(text)
    finally:
        tracemalloc.stop()
    assert samples(text) == samples(m.exposition().decode())
    assert len(text) > 1_000_000 and kept * 5 < len(text), (kept, len(text))
