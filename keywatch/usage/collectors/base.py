"""What every collector shares: the pull context, one HTTP GET that keeps money exact, and key-id lookup."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx2
import structlog

from keywatch.domain import Account, ManagedKey
from keywatch.providers.base import NotSupported, ProviderActionError, ProviderAdapter
from keywatch.providers.errors import error_fields
from keywatch.redact import redact_text

log = structlog.get_logger("keywatch.usage")
MAX_PAGES = 10_000


class PullError(Exception):
    """A usage request failed; the message is safe to log and store (masked, no secret)."""


@dataclass
class Source:
    """What one pull reads: an account with admin credentials, or a group of keys that report on themselves."""

    name: str
    provider: str
    account: Account | None = None
    keys: list[ManagedKey] = field(default_factory=list)


@dataclass
class PullContext:
    http: httpx2.AsyncClient
    now: datetime
    start: datetime  # the window re-read by this pull
    keys: list[ManagedKey]  # the whole inventory (for attribution)
    adapter: Callable[[str], ProviderAdapter]
    timeout: float = 30.0
    # provider key id -> key name, per provider; remembered across pulls by the service
    key_ids: dict[str, dict[str, str]] = field(default_factory=dict)


async def get_json(
    http: httpx2.AsyncClient, url: str, *, headers: dict[str, str], params: Any = None, what: str, timeout: float,
    secrets: list[str],
) -> Any:
    """GET `url`; the body with every number as Decimal, or PullError naming what failed."""
    try:
        response = await http.get(url, headers=headers, params=params, timeout=timeout)
    except httpx2.TimeoutException:
        raise PullError(f"{what}: no answer within {timeout:g}s") from None
    except httpx2.HTTPError as exc:
        raise PullError(redact_text(f"{what}: cannot reach the provider ({type(exc).__name__})", secrets)) from None
    try:
        body = json.loads(response.content, parse_float=Decimal, parse_int=Decimal) if response.content else None
    except ValueError:
        body = None
    if response.status_code >= 300:
        _, _, message = error_fields(body)
        raise PullError(redact_text(f"{what}: HTTP {response.status_code} {message or ''}".strip()[:300], secrets))
    if not isinstance(body, dict):
        raise PullError(f"{what}: the answer is not a JSON object")
    return body


async def get_pages(
    ctx: PullContext, url: str, params: list[tuple[str, str]], *, headers: dict[str, str], what: str,
    secrets: list[str],
) -> list[dict[str, Any]]:
    """Every object in `data` across all pages of a list endpoint that pages with `has_more` + `next_page`
    (the OpenAI and Anthropic admin APIs share this shape). A page without a data list, or more than
    MAX_PAGES pages, is a PullError: a partial answer must not pass for the whole window."""
    items: list[dict[str, Any]] = []
    page: str | None = None
    for _ in range(MAX_PAGES):
        q = params + ([("page", page)] if page else [])
        body = await get_json(ctx.http, url, headers=headers, params=q, what=what, timeout=ctx.timeout, secrets=secrets)
        data = body.get("data")
        if not isinstance(data, list):
            raise PullError(f"{what}: no data list in the answer")
        items += [b for b in data if isinstance(b, dict)]
        page = body.get("next_page")
        if not body.get("has_more") or not page:
            return items
    raise PullError(f"{what}: more than {MAX_PAGES} pages")


def as_int(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, Decimal | int) or value != int(value):
        raise PullError(f"{where} is not a whole number: {value!r}"[:200])
    return int(value)


async def key_ids(ctx: PullContext, provider: str, account: str | None) -> dict[str, str]:
    """Provider key id -> managed key name for the keys of `account`, via provider_key_id or the adapters'
    metadata() (the admin APIs). A key whose id cannot be found is left out: its usage stays attributed to
    the provider's own id (`apikey:<id>`), never guessed onto a key."""
    known = ctx.key_ids.setdefault(provider, {})
    wanted = [k for k in ctx.keys if k.provider == provider and (account is None or k.account in (None, account))]
    have = set(known.values())
    for k in wanted:
        if k.name in have:
            continue
        pid = k.options.get("provider_key_id")
        if not pid:
            try:
                meta = await ctx.adapter(provider).metadata(k)
                pid = meta.provider_key_id
            except (NotSupported, ProviderActionError) as exc:
                log.info("usage_key_id_unknown", key=k.name, provider=provider, reason=str(exc)[:200])
                continue
            except Exception as exc:
                log.warning("usage_key_id_failed", key=k.name, provider=provider, error=type(exc).__name__)
                continue
        if pid:
            known[str(pid)] = k.name
    return known


def scope_for(ids: dict[str, str], key_id: Any, fallback: str) -> str:
    if key_id:
        name = ids.get(str(key_id))
        return f"key:{name}" if name else f"apikey:{key_id}"
    return fallback
