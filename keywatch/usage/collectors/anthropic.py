"""Anthropic: the usage report (hourly tokens per key and model) and the cost report (daily, per workspace).

Costs are reported per workspace, never per key, so they are attributed to `workspace:<id>` (the default
workspace has no id: `workspace:default`); a USD budget on one Anthropic key sees none of them. The cost
amount is a decimal string in cents: "123.45" is $1.2345.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from keywatch.providers import mgmt
from keywatch.usage.collectors.base import (
    PullContext,
    PullError,
    Source,
    as_int,
    get_pages,
    key_ids,
    scope_for,
)
from keywatch.usage.money import amount
from keywatch.usage.rows import PullResult, Replace, UsageRow, ceil, floor

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"


def _rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def pull(ctx: PullContext, source: Source) -> PullResult:
    account = source.account
    assert account is not None
    result = PullResult(source.name, source.provider)
    try:
        secret = mgmt.admin_secret(account, "Anthropic usage")
    except Exception as exc:
        result.errors.append(str(exc))
        return result
    base = (account.base_url or DEFAULT_BASE_URL).rstrip("/")
    headers = {"x-api-key": secret, "anthropic-version": API_VERSION}
    ids = await key_ids(ctx, source.provider, account.name)

    async def pages(path: str, params: list[tuple[str, str]], what: str) -> list[dict[str, Any]]:
        return await get_pages(ctx, base + path, params, headers=headers, what=what, secrets=[secret])

    start_h, end_h = floor(ctx.start, "1h"), ceil(ctx.now, "1h")
    try:
        found = await pages(
            "/v1/organizations/usage_report/messages",
            [("starting_at", _rfc3339(start_h)), ("ending_at", _rfc3339(end_h)), ("bucket_width", "1h"),
             ("limit", "168"), ("group_by[]", "api_key_id"), ("group_by[]", "workspace_id"), ("group_by[]", "model")],
            "Anthropic usage report",
        )
        rows = []
        for b in found:
            bucket = _bucket(b)
            for i, r in enumerate(b.get("results") or []):
                where = f"usage bucket {bucket:%Y-%m-%dT%H} result {i}"
                cache = r.get("cache_creation") or {}
                creation = sum(as_int(cache.get(f), f"{where}.cache_creation.{f}")
                               for f in ("ephemeral_1h_input_tokens", "ephemeral_5m_input_tokens"))
                uncached = as_int(r.get("uncached_input_tokens"), f"{where}.uncached_input_tokens")
                cached = as_int(r.get("cache_read_input_tokens"), f"{where}.cache_read_input_tokens")
                ws = r.get("workspace_id") or "default"
                rows.append(UsageRow(
                    account.name, source.provider, "usage", scope_for(ids, r.get("api_key_id"), f"workspace:{ws}"),
                    "1h", bucket, model=str(r.get("model") or ""),
                    input_tokens=uncached + cached + creation, cached_tokens=cached,
                    output_tokens=as_int(r.get("output_tokens"), f"{where}.output_tokens"),
                ))
        result.add(rows, Replace(account.name, "usage", "1h", start_h, end_h))
    except PullError as exc:
        result.errors.append(str(exc))

    start_d, end_d = floor(ctx.start, "1d"), ceil(ctx.now, "1d")
    try:
        found = await pages(
            "/v1/organizations/cost_report",
            [("starting_at", _rfc3339(start_d)), ("ending_at", _rfc3339(end_d)), ("bucket_width", "1d"),
             ("limit", "31"), ("group_by[]", "workspace_id"), ("group_by[]", "description")],
            "Anthropic cost report",
        )
        rows = []
        for b in found:
            bucket = _bucket(b)
            for i, r in enumerate(b.get("results") or []):
                where = f"cost bucket {bucket:%Y-%m-%d} result {i}"
                cents = r.get("amount")
                if isinstance(cents, dict):  # tolerate {"value": "..."} should the shape change
                    cents = cents.get("value")
                ws = r.get("workspace_id") or "default"
                rows.append(UsageRow(
                    account.name, source.provider, "cost", f"workspace:{ws}", "1d", bucket,
                    line_item=str(r.get("description") or ""), currency=str(r.get("currency") or "USD").upper(),
                    cost=amount(cents, f"{where}.amount") / Decimal(100),
                ))
        result.add(rows, Replace(account.name, "cost", "1d", start_d, end_d))
    except (PullError, ValueError) as exc:
        result.errors.append(str(exc))
    return result


def _bucket(b: dict[str, Any]) -> datetime:
    at = mgmt.parse_time(b.get("starting_at"))
    if at is None:
        raise PullError("a bucket has no starting_at")
    return at
