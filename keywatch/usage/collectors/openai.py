"""OpenAI: Admin API usage (hourly tokens per key, project and model), costs (daily, per project, line item
and key) and the organization's spend limit. Every page is followed (`next_page`)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from keywatch.providers import mgmt
from keywatch.usage.collectors.base import (
    PullContext,
    PullError,
    Source,
    as_int,
    get_json,
    get_pages,
    key_ids,
    scope_for,
)
from keywatch.usage.money import amount
from keywatch.usage.rows import PullResult, Replace, UsageRow, ceil, floor

DEFAULT_BASE_URL = "https://api.openai.com/v1"


async def pull(ctx: PullContext, source: Source) -> PullResult:
    account = source.account
    assert account is not None
    result = PullResult(source.name, source.provider)
    try:
        secret = mgmt.admin_secret(account, "OpenAI usage")
    except Exception as exc:
        result.errors.append(str(exc))
        return result
    base = (account.base_url or DEFAULT_BASE_URL).rstrip("/")
    headers = {"Authorization": f"Bearer {secret}"}
    ids = await key_ids(ctx, source.provider, account.name)
    fallback = f"account:{account.name}"

    async def pages(path: str, params: list[tuple[str, str]], what: str) -> list[dict[str, Any]]:
        return await get_pages(ctx, base + path, params, headers=headers, what=what, secrets=[secret])

    now = ctx.now
    # -- tokens, hourly ------------------------------------------------------------------------------
    start_h, end_h = floor(ctx.start, "1h"), ceil(now, "1h")
    try:
        buckets = await pages(
            "/organization/usage/completions",
            [("start_time", str(int(start_h.timestamp()))), ("end_time", str(int(end_h.timestamp()))),
             ("bucket_width", "1h"), ("limit", "168"),
             ("group_by[]", "api_key_id"), ("group_by[]", "project_id"), ("group_by[]", "model")],
            "OpenAI usage/completions",
        )
        rows = []
        for b in buckets:
            bucket = _bucket(b, "start_time")
            for i, r in enumerate(b.get("results") or []):
                where = f"usage bucket {bucket:%Y-%m-%dT%H} result {i}"
                project = r.get("project_id")
                rows.append(UsageRow(
                    account.name, source.provider, "usage",
                    scope_for(ids, r.get("api_key_id"), f"project:{project}" if project else fallback),
                    "1h", bucket, model=str(r.get("model") or ""),
                    input_tokens=as_int(r.get("input_tokens"), f"{where}.input_tokens"),
                    output_tokens=as_int(r.get("output_tokens"), f"{where}.output_tokens"),
                    cached_tokens=as_int(r.get("input_cached_tokens"), f"{where}.input_cached_tokens"),
                    requests=as_int(r.get("num_model_requests"), f"{where}.num_model_requests"),
                ))
        result.add(rows, Replace(account.name, "usage", "1h", start_h, end_h))
    except PullError as exc:
        result.errors.append(str(exc))
    # -- money, daily --------------------------------------------------------------------------------
    start_d, end_d = floor(ctx.start, "1d"), ceil(now, "1d")
    try:
        buckets = await pages(
            "/organization/costs",
            [("start_time", str(int(start_d.timestamp()))), ("end_time", str(int(end_d.timestamp()))),
             ("bucket_width", "1d"), ("limit", "180"),
             ("group_by[]", "project_id"), ("group_by[]", "line_item"), ("group_by[]", "api_key_id")],
            "OpenAI costs",
        )
        rows = []
        for b in buckets:
            bucket = _bucket(b, "start_time")
            for i, r in enumerate(b.get("results") or []):
                where = f"costs bucket {bucket:%Y-%m-%d} result {i}"
                amt = r.get("amount")
                if not isinstance(amt, dict):
                    raise PullError(f"{where}: no amount")
                project = r.get("project_id")
                rows.append(UsageRow(
                    account.name, source.provider, "cost",
                    scope_for(ids, r.get("api_key_id"), f"project:{project}" if project else fallback),
                    "1d", bucket, line_item=str(r.get("line_item") or ""),
                    currency=str(amt.get("currency") or "usd").upper(),
                    cost=amount(amt.get("value"), f"{where}.amount.value"),
                ))
        result.add(rows, Replace(account.name, "cost", "1d", start_d, end_d))
    except (PullError, ValueError) as exc:
        result.errors.append(str(exc))
    # -- spend limit (optional: an organization may have none) ------------------------------------------
    try:
        body = await get_json(ctx.http, base + "/organization/spend_limit", headers=headers, what="OpenAI spend limit",
                              timeout=ctx.timeout, secrets=[secret])
        cents = body.get("threshold_amount")
        if cents is not None:
            result.spend_limit = amount(cents, "spend_limit.threshold_amount") / Decimal(100)
    except (PullError, ValueError):
        pass
    return result


def _bucket(b: dict[str, Any], field: str) -> datetime:
    value = b.get(field)
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        raise PullError(f"a bucket has no {field}")
    return datetime.fromtimestamp(int(value), UTC)
