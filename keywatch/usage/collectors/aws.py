"""AWS: Bedrock tokens from CloudWatch (namespace AWS/Bedrock, per ModelId, hourly) and money from Cost
Explorer (daily, per SERVICE: "Amazon Bedrock" and the Marketplace names of models sold through Bedrock,
e.g. "Claude 3 Haiku (Amazon Bedrock Edition)").

Neither attributes to a key: both go to `account:<name>`. boto3 is synchronous and optional: it is imported
here only and every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from keywatch.usage.collectors.base import PullContext, PullError, Source
from keywatch.usage.money import amount
from keywatch.usage.rows import PullResult, Replace, UsageRow, ceil, floor

BEDROCK_SERVICE = "Amazon Bedrock"
MARKETPLACE_MARK = "(Amazon Bedrock Edition)"


def is_bedrock_service(name: str) -> bool:
    return name == BEDROCK_SERVICE or MARKETPLACE_MARK in name or name.startswith("Amazon Bedrock ")


def _clients(source: Source, timeout: float) -> tuple[Any, Any]:
    import boto3
    from botocore.config import Config

    account = source.account
    assert account is not None
    opts = account.options
    secret = account.admin_secret.reveal() if account.admin_secret else None
    kw: dict[str, Any] = {
        "config": Config(connect_timeout=min(timeout, 10), read_timeout=timeout, retries={"max_attempts": 1}),
        "endpoint_url": opts.get("endpoint_url") or account.base_url,
    }
    if secret and opts.get("access_key_id"):
        kw.update(aws_access_key_id=opts["access_key_id"], aws_secret_access_key=secret)
    session = boto3.session.Session()
    region = opts.get("region") or "us-east-1"
    return session.client("cloudwatch", region_name=region, **kw), session.client("ce", region_name="us-east-1", **kw)


def _tokens(cw: Any, start: datetime, end: datetime) -> dict[tuple[str, datetime], dict[str, int]]:
    models: set[str] = set()
    for page in cw.get_paginator("list_metrics").paginate(Namespace="AWS/Bedrock"):
        for m in page.get("Metrics", []):
            dims = m.get("Dimensions", [])
            # Single-dimension ModelId series only: the others repeat the same tokens (double counting).
            if m.get("MetricName") in ("InputTokenCount", "OutputTokenCount", "Invocations") and len(dims) == 1 \
                    and dims[0].get("Name") == "ModelId":
                models.add(dims[0]["Value"])
    out: dict[tuple[str, datetime], dict[str, int]] = {}
    for model in sorted(models):
        for metric, field in (("InputTokenCount", "input"), ("OutputTokenCount", "output"), ("Invocations", "req")):
            resp = cw.get_metric_statistics(
                Namespace="AWS/Bedrock", MetricName=metric, Dimensions=[{"Name": "ModelId", "Value": model}],
                StartTime=start, EndTime=end, Period=3600, Statistics=["Sum"],
            )
            for p in resp.get("Datapoints", []):
                bucket = floor(p["Timestamp"], "1h")
                slot = out.setdefault((model, bucket), {"input": 0, "output": 0, "req": 0})
                slot[field] += int(p.get("Sum", 0))
    return out


def _costs(ce: Any, start: datetime, end: datetime) -> list[tuple[datetime, str, str, Any]]:
    out = []
    token = None
    for _ in range(1000):
        kw: dict[str, Any] = {
            "TimePeriod": {"Start": start.strftime("%Y-%m-%d"), "End": end.strftime("%Y-%m-%d")},
            "Granularity": "DAILY", "Metrics": ["UnblendedCost"],
            "GroupBy": [{"Type": "DIMENSION", "Key": "SERVICE"}],
        }
        if token:
            kw["NextPageToken"] = token
        resp = ce.get_cost_and_usage(**kw)
        for r in resp.get("ResultsByTime", []):
            day = datetime.fromisoformat(r["TimePeriod"]["Start"]).replace(tzinfo=start.tzinfo)
            for g in r.get("Groups", []):
                service = g["Keys"][0]
                if not is_bedrock_service(service):
                    continue
                m = g["Metrics"]["UnblendedCost"]
                out.append((day, service, m.get("Unit", "USD"), m["Amount"]))
        token = resp.get("NextPageToken")
        if not token:
            return out
    raise PullError("Cost Explorer: too many pages")


async def pull(ctx: PullContext, source: Source) -> PullResult:
    account = source.account
    assert account is not None
    result = PullResult(source.name, account.provider)
    scope = f"account:{account.name}"
    try:
        cw, ce = await asyncio.to_thread(_clients, source, ctx.timeout)
    except Exception as exc:
        result.errors.append(f"AWS clients: {type(exc).__name__}")
        return result
    start_h, end_h = floor(ctx.start, "1h"), ceil(ctx.now, "1h")
    try:
        tokens = await asyncio.to_thread(_tokens, cw, start_h, end_h)
        rows = [UsageRow(account.name, account.provider, "usage", scope, "1h", bucket, model=model,
                         input_tokens=v["input"], output_tokens=v["output"], requests=v["req"])
                for (model, bucket), v in tokens.items()]
        result.add(rows, Replace(account.name, "usage", "1h", start_h, end_h))
    except Exception as exc:
        result.errors.append(f"CloudWatch AWS/Bedrock: {type(exc).__name__}: {str(exc)[:200]}")
    start_d, end_d = floor(ctx.start, "1d"), floor(ctx.now, "1d") + timedelta(days=1)
    try:
        costs = await asyncio.to_thread(_costs, ce, start_d, end_d)
        rows = [UsageRow(account.name, account.provider, "cost", scope, "1d", day, line_item=service,
                         currency=unit.upper(), cost=amount(value, f"Cost Explorer {day:%Y-%m-%d} {service}"))
                for day, service, unit, value in costs]
        result.add(rows, Replace(account.name, "cost", "1d", start_d, end_d))
    except Exception as exc:
        result.errors.append(f"Cost Explorer: {type(exc).__name__}: {str(exc)[:200]}")
    return result
