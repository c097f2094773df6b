"""The status page at `/` over real HTTP: every key from the tracker's snapshot, filters and paging, escaping,
the token off loopback, a database that does not answer; and in a real headless Chromium (Debian's
`chromium`, driven by playwright): the page loads, filters and pages, with a screenshot kept under the
pytest basetemp."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
import pytest

from keywatch.domain import AdminState, Event, Health, KeyState, Secret
from keywatch.state import StateTracker
from keywatch.statuspage import PageSource, StatusPage, is_loopback
from keywatch.web import WebServer

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TOKEN = "status-token-0123456789abcdef"
CHROMIUM = os.environ.get("KEYWATCH_CHROMIUM", "/usr/bin/chromium")
HEALTHS = [Health.HEALTHY, Health.HEALTHY, Health.HEALTHY, Health.INVALID, Health.RATE_LIMITED]


def fleet(n: int) -> StateTracker:
    tracker = StateTracker()
    for i in range(n):
        provider = ("openai", "anthropic", "openrouter")[i % 3]
        tracker.set(KeyState(
            key=f"key-{i:05d}", provider=provider, fingerprint=f"fp{i}", masked="sk-...abcd",
            health=HEALTHS[i % len(HEALTHS)], health_since=NOW - timedelta(minutes=i % 90),
            last_probe_at=NOW - timedelta(seconds=30), latency_ms=100 + i % 50,
            admin_state=AdminState.DISABLED if i % 7 == 0 else AdminState.ACTIVE, compromised=i == 42,
        ))
    return tracker


def source(tracker: StateTracker, *, events: list[Event] | None = None, fail_events: bool = False) -> PageSource:
    def read(limit: int) -> list[Event]:
        if fail_events:
            raise OSError("database is locked")
        return (events or [])[:limit]

    return PageSource(keys=tracker.snapshot, events=read, outages=lambda: {"anthropic": NOW - timedelta(hours=1)},
                      spend=lambda: {"key-00001": ("12.30", "50.00 USD")})


async def serve(page_source: PageSource, listen: str = "127.0.0.1:0", token: str | None = None) -> WebServer:
    server = WebServer(listen, lambda: iter(()), lambda: (True, {}))
    server.add_status_page(StatusPage(page_source, clock=lambda: NOW), Secret(token) if token else None)
    await server.start()
    return server


@pytest.fixture
async def page_url() -> AsyncIterator[str]:
    events = [Event(NOW - timedelta(minutes=5), "key_disabled", "key-00003", "policy:dead-keys",
                    "disabled at provider: invalid <script>alert(1)</script>")]
    tracker = fleet(10_000)
    tracker.set(KeyState(key="zz-<b>evil</b>&name", provider="openai", fingerprint="x", masked="m",
                         health=Health.FORBIDDEN))
    server = await serve(source(tracker, events=events))
    yield f"http://127.0.0.1:{server.bound_port}/"
    await server.stop()


async def get(url: str, **kw) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.get(url, **kw)


async def test_page_lists_keys_outages_and_events_from_the_snapshot(page_url):
    r = await get(page_url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    body = r.text
    assert "10001 matching keys; page 1 of 101." in body
    assert body.count("<tr data-key=") == 100
    assert '<td class="h-invalid">invalid</td>' in body
    assert "12.30 / 50.00 USD" in body  # spend against budget where a budget covers the key
    assert "<td>anthropic</td>" in body.split('id="outages"')[1].split("</table>")[0]
    assert "key_disabled" in body and "policy:dead-keys" in body
    assert "<script" not in body  # no script of ours, and no one else's either
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "default-src 'none'" in r.headers["content-security-policy"]


async def test_every_value_is_escaped(page_url):
    body = (await get(page_url, params={"name": "evil"})).text
    assert "<b>evil</b>" not in body
    assert "&lt;b&gt;evil&lt;/b&gt;&amp;name" in body
    body = (await get(page_url, params={"name": '"><i>x'})).text
    assert '"><i>x' not in body and "&quot;&gt;&lt;i&gt;x" in body


async def test_filters_combine_and_paging_keeps_them(page_url):
    body = (await get(page_url, params={"health": "invalid", "provider": "anthropic", "name": "key-00"})).text
    # keys 0..999 that are invalid (i % 5 == 3) on anthropic (i % 3 == 1): i % 15 == 13, 66 of them
    assert "66 matching keys; page 1 of 1." in body
    rows = [line for line in body.splitlines() if line.startswith("<tr data-key=")]
    assert len(rows) == 66 and all("<td>anthropic</td>" in row and 'class="h-invalid"' in row for row in rows)
    body = (await get(page_url, params={"health": "healthy", "per_page": "50", "page": "2"})).text
    assert "6000 matching keys; page 2 of 120." in body
    assert 'href="?health=healthy&amp;page=3&amp;per_page=50"' in body
    assert 'href="?health=healthy&amp;per_page=50"' in body  # previous: page 1 is the default


async def test_bad_parameters_are_refused_with_the_reason(page_url):
    r = await get(page_url, params={"health": "dead"})
    assert r.status_code == 400 and "health must be one of healthy" in r.text
    r = await get(page_url, params={"page": "0"})
    assert r.status_code == 400 and "page must be a whole number" in r.text
    r = await get(page_url, params={"per_page": "100000"})
    assert r.status_code == 400 and "per_page" in r.text


async def test_a_database_that_does_not_answer_leaves_the_keys_shown():
    server = await serve(source(fleet(5), fail_events=True))
    try:
        r = await get(f"http://127.0.0.1:{server.bound_port}/")
        assert r.status_code == 200
        assert "5 matching keys" in r.text and "The database did not answer" in r.text
    finally:
        await server.stop()


async def test_off_loopback_the_page_needs_the_token():
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("keywatch.internal")
    server = await serve(source(fleet(3)), "0.0.0.0:0")
    try:
        r = await get(f"http://127.0.0.1:{server.bound_port}/")
        assert r.status_code == 403 and "daemon.status_token" in r.text
    finally:
        await server.stop()
    server = await serve(source(fleet(3)), "0.0.0.0:0", token=TOKEN)
    try:
        url = f"http://127.0.0.1:{server.bound_port}/"
        r = await get(url)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert TOKEN not in r.text
        assert (await get(url, headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await get(url, headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
        assert (await get(url, auth=("anyone", TOKEN))).status_code == 200
        assert (await get(url, auth=("anyone", "nope"))).status_code == 401
        assert (await get(f"http://127.0.0.1:{server.bound_port}/healthz")).status_code == 200  # probes stay open
    finally:
        await server.stop()


# --- a real browser -------------------------------------------------------------------------------------------

def chromium_missing() -> str | None:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (tests/run installs Debian's chromium package where apt-get works)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is in keywatch[test])"
    return None


@pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")
async def test_in_headless_chromium_the_page_loads_filters_and_pages(page_url, tmp_path):
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            context = await browser.new_context(java_script_enabled=False)  # the page needs none
            page = await context.new_page()
            await page.goto(page_url)
            assert await page.title() == "keywatch status"
            assert await page.locator("#keys tbody tr").count() == 100
            assert "10001 matching keys" in await page.locator("#summary").inner_text()

            await page.select_option("select[name=health]", "invalid")
            await page.select_option("select[name=provider]", "openai")
            await page.fill("input[name=name]", "key-01")
            await page.click("button[type=submit]")
            await page.wait_for_load_state()
            # keys 1000..1999, invalid (i % 5 == 3) on openai (i % 3 == 0): i % 15 == 3 -> 67 keys
            assert "67 matching keys; page 1 of 1." in await page.locator("#summary").inner_text()
            cells = await page.locator("#keys tbody tr td:nth-child(3)").all_inner_texts()
            assert cells and set(cells) == {"invalid"}
            assert "health=invalid" in page.url

            await page.goto(page_url + "?per_page=20")
            await page.click("a[rel=next]")
            await page.wait_for_load_state()
            assert "page 2 of 501" in await page.locator("#summary").inner_text()
            first = await page.locator("#keys tbody tr td:first-child").first.inner_text()
            assert first == "key-00020"
            shot = tmp_path / "status-page.png"
            await page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 5000
            print(f"status page screenshot: {shot}")
        finally:
            await browser.close()
