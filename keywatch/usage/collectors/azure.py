"""Azure OpenAI: tokens from Azure Monitor metrics on the account (hourly, per model deployment) and money from
Cost Management (daily, per meter subcategory of the account's resource).

Both are per account (the Cognitive Services resource), never per key: an account has two keys and Azure
cannot tell which one was used, so everything is attributed to `account:<name>`.

Plain ARM REST over the shared HTTP client with a bearer token from the credential the azure_openai adapter
builds (azure-identity, already needed for key management): two GETs/POSTs do not justify two more SDKs
(azure-mgmt-monitor, azure-mgmt-costmanagement), and a local http:// ARM needs no bearer-policy workaround.

Monitor returns only `top` series per metric (10 unless asked), so `top` is raised; a `total` missing from a
point means no data. Cost Management names its cost column itself ("Cost" or "PreTaxCost"): it is read from
`columns`, as are the others, and its money stays Decimal from the JSON text.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx2

from keywatch.domain import Account, Secret
from keywatch.providers.base import ProviderActionError
from keywatch.providers.errors import error_fields
from keywatch.redact import redact_text
from keywatch.usage.collectors.base import MAX_PAGES, PullContext, PullError, Source, as_int
from keywatch.usage.money import amount
from keywatch.usage.rows import PullResult, Replace, UsageRow, ceil, floor

ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
MONITOR_API_VERSION = "2024-02-01"
COST_API_VERSION = "2025-03-01"
METRICS = {"ProcessedPromptTokens": "input", "GeneratedTokens": "output", "AzureOpenAIRequests": "requests"}
MAX_SERIES = 1000
COST_COLUMNS = ("Cost", "PreTaxCost", "CostUSD", "totalCost")


def resource_id(account: Account) -> str:
    opts = account.options
    missing = [f for f in ("subscription_id", "resource_group", "account_name") if not opts.get(f)]
    if missing:
        raise PullError(f"account {account.name}: {', '.join(missing)} missing")
    return (f"/subscriptions/{opts['subscription_id']}/resourceGroups/{opts['resource_group']}"
            f"/providers/Microsoft.CognitiveServices/accounts/{opts['account_name']}")


def _secrets(account: Account) -> list[str]:
    return [s.reveal() for s in account.options.values() if isinstance(s, Secret)]


async def _token(ctx: PullContext, account: Account) -> str:
    """A bearer token for ARM from the adapter's credential (DefaultAzureCredential or a service principal)."""
    adapter: Any = ctx.adapter(account.provider)
    try:
        credential = adapter.credential(account)
        token = await asyncio.wait_for(asyncio.to_thread(credential.get_token, ARM_SCOPE), ctx.timeout)
    except ProviderActionError as exc:
        raise PullError(str(exc)) from None
    except TimeoutError:
        raise PullError(f"Azure credential: no token within {ctx.timeout:g}s") from None
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise PullError(redact_text(f"Azure credential: {type(exc).__name__}: {first}", _secrets(account))) from None
    return str(token.token)


async def _call(ctx: PullContext, method: str, url: str, *, token: str, what: str, params: Any = None,
                body: Any = None, secrets: list[str]) -> dict[str, Any]:
    """One ARM request; the body with every number as Decimal, or PullError naming what failed (no token)."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        response = await ctx.http.request(method, url, headers=headers, params=params, json=body,
                                          timeout=ctx.timeout)
    except httpx2.TimeoutException:
        raise PullError(f"{what}: no answer within {ctx.timeout:g}s") from None
    except httpx2.HTTPError as exc:
        raise PullError(f"{what}: cannot reach Azure ({type(exc).__name__})") from None
    try:
        data = json.loads(response.content, parse_float=Decimal, parse_int=Decimal) if response.content else None
    except ValueError:
        data = None
    if response.status_code >= 300:
        _, code, message = error_fields(data)
        text = f"{what}: HTTP {response.status_code} {code or ''} {message or ''}".replace("  ", " ").strip()
        raise PullError(redact_text(text[:300], [token, *secrets]))
    if not isinstance(data, dict):
        raise PullError(f"{what}: the answer is not a JSON object")
    return data


def _utc(text: Any, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise PullError(f"{where}: not a time: {text!r}"[:200]) from None
    return at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _tokens(ctx: PullContext, base: str, rid: str, token: str, start: datetime, end: datetime,
                  secrets: list[str]) -> dict[tuple[str, str, datetime], dict[str, int]]:
    """(deployment, model, hour) -> input/output/requests, from the Monitor series split by deployment and model."""
    url: str | None = f"{base}{rid}/providers/Microsoft.Insights/metrics"
    params: Any = {
        "api-version": MONITOR_API_VERSION, "timespan": f"{_iso(start)}/{_iso(end)}", "interval": "PT1H",
        "metricnames": ",".join(METRICS), "aggregation": "Total", "top": str(MAX_SERIES),
        "$filter": "ModelDeploymentName eq '*' and ModelName eq '*'",
        "metricnamespace": "Microsoft.CognitiveServices/accounts",
    }
    out: dict[tuple[str, str, datetime], dict[str, int]] = {}
    for _ in range(MAX_PAGES):
        if url is None:
            return out
        body = await _call(ctx, "GET", url, token=token, params=params, what="Azure Monitor metrics",
                           secrets=secrets)
        for metric in body.get("value") or []:
            name = (metric.get("name") or {}).get("value")
            field = METRICS.get(name)
            if field is None:
                continue
            series = metric.get("timeseries") or []
            if len(series) >= MAX_SERIES:
                raise PullError(f"Azure Monitor {name}: {MAX_SERIES} series or more; some would be missing")
            for ts in series:
                dims = {str((m.get("name") or {}).get("value", "")).lower(): str(m.get("value") or "")
                        for m in ts.get("metadatavalues") or []}
                deployment, model = dims.get("modeldeploymentname", ""), dims.get("modelname", "")
                for point in ts.get("data") or []:
                    if point.get("total") is None:
                        continue
                    where = f"Azure Monitor {name} {deployment} {point.get('timeStamp')}"
                    hour = floor(_utc(point.get("timeStamp"), where), "1h")
                    slot = out.setdefault((deployment, model, hour), {"input": 0, "output": 0, "requests": 0})
                    slot[field] += as_int(point["total"], where)
        url, params = body.get("nextLink") or None, None
    raise PullError(f"Azure Monitor metrics: more than {MAX_PAGES} pages")


def _day(value: Any, where: str) -> datetime:
    """UsageDate: a yyyymmdd number, or an ISO date(time) string."""
    text = str(value)
    if text.isdigit() and len(text) == 8:
        return datetime(int(text[:4]), int(text[4:6]), int(text[6:]), tzinfo=UTC)
    return floor(_utc(text, where), "1d")


async def _costs(ctx: PullContext, base: str, rid: str, token: str, start: datetime, end: datetime,
                 secrets: list[str]) -> list[tuple[datetime, str, str, Decimal]]:
    """(day, meter subcategory, currency, cost) of the account's resource, every page."""
    scope = rid.split("/providers/", 1)[0]  # the resource group: Cost Management Reader there is enough
    url: str | None = f"{base}{scope}/providers/Microsoft.CostManagement/query?api-version={COST_API_VERSION}"
    query = {
        "type": "ActualCost",
        "timeframe": "Custom",
        "timePeriod": {"from": _iso(start), "to": _iso(end - timedelta(seconds=1))},
        "dataset": {
            "granularity": "Daily",
            "aggregation": {"totalCost": {"name": "Cost", "function": "Sum"}},
            "grouping": [{"type": "Dimension", "name": "ResourceId"},
                         {"type": "Dimension", "name": "MeterSubcategory"}],
            "filter": {"dimensions": {"name": "ResourceId", "operator": "In", "values": [rid]}},
        },
    }
    out = []
    for _ in range(MAX_PAGES):
        if url is None:
            return out
        body = await _call(ctx, "POST", url, token=token, body=query, what="Azure Cost Management query",
                           secrets=secrets)
        props = body.get("properties") or {}
        names = [str(c.get("name")) for c in props.get("columns") or [] if isinstance(c, dict)]
        cost_col = next((n for n in COST_COLUMNS if n in names), None)
        if cost_col is None or "UsageDate" not in names:
            raise PullError(f"Azure Cost Management query: no cost or UsageDate column in {names}"[:300])
        at = {n: i for i, n in enumerate(names)}
        for i, row in enumerate(props.get("rows") or []):
            where = f"Cost Management row {i}"
            if not isinstance(row, list) or len(row) != len(names):
                raise PullError(f"{where}: expected {len(names)} values")
            if "ResourceId" in at and str(row[at["ResourceId"]]).lower() != rid.lower():
                continue  # another resource of the group (the filter should have left it out)
            day = _day(row[at["UsageDate"]], f"{where}.UsageDate")
            meter = str(row[at["MeterSubcategory"]] or "") if "MeterSubcategory" in at else ""
            currency = str(row[at["Currency"]] or "USD").upper() if "Currency" in at else "USD"
            out.append((day, meter, currency, amount(row[at[cost_col]], f"{where}.{cost_col}")))
        url = props.get("nextLink") or None
    raise PullError(f"Azure Cost Management query: more than {MAX_PAGES} pages")


async def pull(ctx: PullContext, source: Source) -> PullResult:
    account = source.account
    assert account is not None
    result = PullResult(source.name, source.provider)
    scope = f"account:{account.name}"
    secrets = _secrets(account)
    try:
        rid = resource_id(account)
        token = await _token(ctx, account)
    except PullError as exc:
        result.errors.append(str(exc))
        return result
    base = (account.base_url or ARM_URL).rstrip("/")

    start_h, end_h = floor(ctx.start, "1h"), ceil(ctx.now, "1h")
    try:
        tokens = await _tokens(ctx, base, rid, token, start_h, end_h, secrets)
        rows = [UsageRow(account.name, account.provider, "usage", scope, "1h", hour, model=deployment, line_item=model,
                         input_tokens=v["input"], output_tokens=v["output"], requests=v["requests"])
                for (deployment, model, hour), v in tokens.items()]
        result.add(rows, Replace(account.name, "usage", "1h", start_h, end_h))
    except PullError as exc:
        result.errors.append(str(exc))

    start_d, end_d = floor(ctx.start, "1d"), floor(ctx.now, "1d") + timedelta(days=1)
    try:
        costs = await _costs(ctx, base, rid, token, start_d, end_d, secrets)
        rows = [UsageRow(account.name, account.provider, "cost", scope, "1d", day, line_item=meter, currency=currency,
                         cost=cost) for day, meter, currency, cost in costs]
        result.add(rows, Replace(account.name, "cost", "1d", start_d, end_d))
    except (PullError, ValueError) as exc:
        result.errors.append(str(exc))
    return result
