"""The read-only status page the daemon serves at `/`: plain server-rendered HTML, no JavaScript.

Every key (health, admin state, since when, last probe, latency, spend against budget, compromised,
rotation due), the recent events and the open provider outages. The keys come from the in-memory tracker
snapshot, filtered (health, provider, name substring) and paged, so 10,000 keys cost one pass over a dict
per request; only the recent events are read from the database, at most `EVENTS` of them, and a database
that does not answer leaves the rest of the page intact. Every value is HTML-escaped.
"""

from __future__ import annotations

import html
import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from keywatch.domain import Event, Health, KeyState

PER_PAGE = 100
MAX_PER_PAGE = 500
EVENTS = 20
HEALTHS = tuple(h.value for h in Health)

# key name -> (spent, budget) in the budget's currency, e.g. ("12.30", "50.00 USD")
SpendFn = Callable[[], Mapping[str, tuple[str, str]]]


@dataclass
class PageSource:
    """Where the page reads from; every callable is cheap except `events` (the database, bounded)."""

    keys: Callable[[], Mapping[str, KeyState]]
    events: Callable[[int], list[Event]]
    outages: Callable[[], Mapping[str, datetime]]
    spend: SpendFn | None = None
    rotation_due: Callable[[], Mapping[str, datetime]] | None = None


def spend_by_key(statuses: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """key -> (spent, budget) from the usage capability's budget statuses (`name`, `period`, `limit_usd`,
    `limit_tokens`, `used.usd`, `used.tokens`, `ratio`, `keys`); a key under several budgets shows the one
    nearest its limit."""
    nearest: dict[str, Any] = {}
    for st in statuses:
        for key in st.keys:
            if key not in nearest or st.ratio > nearest[key].ratio:
                nearest[key] = st
    out = {}
    for key, st in nearest.items():
        if st.limit_usd is not None:
            out[key] = (f"${st.used.usd:.2f}", f"${st.limit_usd:.2f} {st.period} ({st.name})")
        else:
            out[key] = (f"{st.used.tokens} tokens", f"{st.limit_tokens} {st.period} ({st.name})")
    return out


class BadQuery(ValueError):
    """A filter or page parameter that means nothing: answered 400 with this message."""


@dataclass(frozen=True)
class Query:
    health: str = ""
    provider: str = ""
    name: str = ""
    page: int = 1
    per_page: int = PER_PAGE

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        health = params.get("health", "")
        if health and health not in HEALTHS:
            raise BadQuery(f"health must be one of {', '.join(HEALTHS)} (got {health[:40]!r})")
        page = _positive(params, "page", 1, 10**9)
        per_page = _positive(params, "per_page", PER_PAGE, MAX_PER_PAGE)
        return cls(health, params.get("provider", "")[:64], params.get("name", "")[:200], page, per_page)

    def link(self, **changes: object) -> str:
        values = {"health": self.health, "provider": self.provider, "name": self.name, "page": self.page,
                  "per_page": self.per_page, **changes}
        defaults = {"page": 1, "per_page": PER_PAGE}
        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", None) and defaults.get(k) != v})


def _positive(params: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadQuery(f"{name} must be a whole number from 1 to {high} (got {raw[:20]!r})")
    return int(raw)


def is_loopback(host: str) -> bool:
    """Whether `daemon.listen`'s host only answers this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "-"
    seconds = max(0.0, (now - at).total_seconds())
    if seconds < 120:
        ago = f"{seconds:.0f}s ago"
    elif seconds < 7200:
        ago = f"{seconds / 60:.0f}m ago"
    elif seconds < 172800:
        ago = f"{seconds / 3600:.0f}h ago"
    else:
        ago = f"{seconds / 86400:.0f}d ago"
    return f'<time datetime="{e(at.isoformat())}" title="{e(at.isoformat())}">{ago}</time>'


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;white-space:nowrap}
th{background:#f4f4f4}
.h-healthy{color:#176f2c}.h-rate_limited{color:#8a6d00}
.h-invalid,.h-quota_exhausted,.h-forbidden{color:#b00020;font-weight:bold}
.h-provider_error,.h-unreachable{color:#a04b00}.h-unknown{color:#666}
.yes{color:#b00020;font-weight:bold}
form{margin:.5em 0}form label{margin-right:1em}
nav a,nav span{margin-right:1em}
"""


class StatusPage:
    def __init__(self, source: PageSource, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.source = source
        self.clock = clock

    def select(self, q: Query) -> tuple[list[KeyState], int, list[str], int]:
        """(the keys of the page, how many match, every provider known, how many keys) from one snapshot."""
        states = self.source.keys()
        providers = sorted({s.provider for s in states.values()})
        needle = q.name.lower()
        matched = [
            s for s in states.values()
            if (not q.health or s.health == q.health)
            and (not q.provider or s.provider == q.provider)
            and (not needle or needle in s.key.lower())
        ]
        matched.sort(key=lambda s: s.key)
        start = (q.page - 1) * q.per_page
        return matched[start : start + q.per_page], len(matched), providers, len(states)

    def render(self, q: Query, events: list[Event] | None) -> str:
        """The whole page. `events` None: the database did not answer (said so on the page)."""
        now = self.clock()
        rows, total, providers, fleet = self.select(q)
        pages = max(1, math.ceil(total / q.per_page))
        spend = self.source.spend() if self.source.spend else {}
        rotation = self.source.rotation_due() if self.source.rotation_due else {}
        outages = self.source.outages()
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            "<title>keywatch status</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>keywatch status</h1><p>As of {e(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}: "
            f"{fleet} keys; read-only.</p>",
        ]
        out += self._outages(outages, now)
        out += self._form(q, providers)
        out.append(f'<p id="summary">{total} matching keys; page {min(q.page, pages)} of {pages}.</p>')
        out.append('<table id="keys"><thead><tr><th>name</th><th>provider</th><th>health</th><th>admin state</th>'
                   "<th>since</th><th>last probe</th><th>latency</th><th>spend / budget</th><th>compromised</th>"
                   "<th>rotation due</th></tr></thead><tbody>")
        for s in rows:
            spent = spend.get(s.key)
            due = rotation.get(s.key)
            out.append(
                f'<tr data-key="{e(s.key)}"><td>{e(s.key)}</td><td>{e(s.provider)}</td>'
                f'<td class="h-{e(s.health)}">{e(s.health)}</td><td>{e(s.admin_state)}</td>'
                f"<td>{_when(s.health_since, now)}</td><td>{_when(s.last_probe_at, now)}</td>"
                f"<td>{'-' if s.latency_ms is None else e(f'{s.latency_ms:.0f} ms')}</td>"
                f"<td>{'-' if spent is None else e(f'{spent[0]} / {spent[1]}')}</td>"
                f"<td>{'<span class=yes>yes</span>' if s.compromised else 'no'}</td>"
                f"<td>{'-' if due is None else e(due.strftime('%Y-%m-%d'))}</td></tr>"
            )
        out.append("</tbody></table>")
        out += self._pager(q, pages)
        out += self._events(events, now)
        out.append("</body></html>")
        return "\n".join(out)

    def _outages(self, outages: Mapping[str, datetime], now: datetime) -> list[str]:
        if not outages:
            return ['<h2>Open outages</h2><p id="outages">None.</p>']
        out = ['<h2>Open outages</h2><table id="outages"><thead><tr><th>provider</th><th>since</th></tr></thead>'
               "<tbody>"]
        for provider, since in sorted(outages.items()):
            out.append(f"<tr><td>{e(provider)}</td><td>{_when(since, now)}</td></tr>")
        out.append("</tbody></table>")
        return out

    def _form(self, q: Query, providers: list[str]) -> list[str]:
        def options(values: list[str] | tuple[str, ...], chosen: str) -> str:
            items = ['<option value="">any</option>']
            items += [f'<option value="{e(v)}"{" selected" if v == chosen else ""}>{e(v)}</option>' for v in values]
            return "".join(items)

        return [
            '<h2>Keys</h2><form method="get" action="/" id="filter">',
            f'<label>health <select name="health">{options(HEALTHS, q.health)}</select></label>',
            f'<label>provider <select name="provider">{options(providers, q.provider)}</select></label>',
            f'<label>name contains <input type="search" name="name" value="{e(q.name)}"></label>',
            f'<label>per page <input type="number" name="per_page" min="1" max="{MAX_PER_PAGE}" '
            f'value="{q.per_page}"></label>',
            '<button type="submit">Filter</button> <a href="/">clear</a></form>',
        ]

    def _pager(self, q: Query, pages: int) -> list[str]:
        parts = ['<nav id="pages">']
        if q.page > 1:
            parts.append(f'<a rel="prev" href="{e(q.link(page=q.page - 1))}">previous</a>')
        parts.append(f"<span>page {min(q.page, pages)} of {pages}</span>")
        if q.page < pages:
            parts.append(f'<a rel="next" href="{e(q.link(page=q.page + 1))}">next</a>')
        parts.append("</nav>")
        return ["".join(parts)]

    def _events(self, events: list[Event] | None, now: datetime) -> list[str]:
        out = ["<h2>Recent events</h2>"]
        if events is None:
            return [*out, '<p id="events">The database did not answer; events are not shown.</p>']
        if not events:
            return [*out, '<p id="events">None yet.</p>']
        out.append('<table id="events"><thead><tr><th>when</th><th>kind</th><th>key</th><th>by</th>'
                   "<th>what</th></tr></thead><tbody>")
        for ev in events:
            out.append(f"<tr><td>{_when(ev.at, now)}</td><td>{e(ev.kind)}</td><td>{e(ev.key or '-')}</td>"
                       f"<td>{e(ev.actor)}</td><td>{e(ev.message)}</td></tr>")
        out.append("</tbody></table>")
        return out
