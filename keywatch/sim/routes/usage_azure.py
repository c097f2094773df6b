"""Azure usage and cost under the azure simulator's ARM prefix (`<sim>/azure/arm`), plus a managed identity.

Azure Monitor: `GET .../accounts/{name}/providers/Microsoft.Insights/metrics?api-version=2024-02-01` with
timespan `start/end`, interval (PT1M, PT1H, P1D), metricnames (comma list), aggregation Total and an optional
`$filter` such as `ModelDeploymentName eq '*' and ModelName eq '*'` that splits the series by those
dimensions. As Azure does, only `top` series (default 10) are returned per metric, dimension names in
`metadatavalues` come back lower-cased, and intervals without data carry no `total`.

Cost Management: `POST /azure/arm/subscriptions/{sub}[/resourceGroups/{rg}]/providers/Microsoft.CostManagement/
query?api-version=2025-03-01` with a QueryDefinition (Custom timePeriod, Daily granularity, grouping by
ResourceId and/or MeterSubcategory, an optional ResourceId `In` filter). The answer is `properties.columns`
and `.rows` with the cost column named as the fixture says (`cost_column`, "Cost" by default; "PreTaxCost"
is the other name seen), UsageDate as a yyyymmdd number, and `properties.nextLink` when `cost_page_size` caps a
page (the client POSTs the same body to it). Resource ids in rows are lower-cased, as Azure's are.

Fixtures in state.admin["azure_openai"] (set them with SimulatorThread.call(set_fixtures, ...) or
keywatch.sim.routes.usage_openai.set_fixtures(state, "azure_openai", ...)):
  metrics: [{"at", "account", "deployment", "model", "prompt_tokens", "generated_tokens", "requests"}]
  costs: [{"at" (the day), "account", "meter_subcategory", "cost": "1.23", "currency": "USD"}]
  cost_column, cost_page_size, monitor_status / cost_status (answer with this HTTP status: an outage).

Managed identity: `GET /azure/identity/token?resource=...` with `X-IDENTITY-HEADER` answers as App Service's
identity endpoint does, so DefaultAzureCredential (IDENTITY_ENDPOINT + IDENTITY_HEADER) gets a token here.
"""

from __future__ import annotations

import secrets as pysecrets
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from keywatch.sim.common import admit, bearer, json_response, request_id, state_of
from keywatch.sim.routes import azure as sim_azure
from keywatch.sim.routes.usage_openai import dec_number, floor_to, parse_at
from keywatch.sim.state import SimState

PREFIX = "/azure/arm+usage"  # a label for the mount check; routes are listed in register()
PROVIDER = sim_azure.PROVIDER
ARM = "/azure/arm"
INTERVALS = {"PT1M": timedelta(minutes=1), "PT1H": timedelta(hours=1), "P1D": timedelta(days=1)}
METRIC_FIELDS = {
    "ProcessedPromptTokens": ("prompt_tokens",),
    "GeneratedTokens": ("generated_tokens",),
    "TokenTransaction": ("prompt_tokens", "generated_tokens"),
    "AzureOpenAIRequests": ("requests",),
}
DIMENSIONS = {"modeldeploymentname": "deployment", "modelname": "model"}
DEFAULT_TOP = 10


def resource_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{name}"


def set_fixtures(state: SimState, **fields: Any) -> None:
    """Replace the given Azure usage fixture fields (call on the simulator's loop)."""
    state.provider_data(PROVIDER).update(fields)


def _arm_error(status: int, code: str, message: str) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status, {"x-ms-request-id": request_id()})


def _outage(status: int) -> web.Response:
    if status == 429:
        return _arm_error(429, "429", "Too many requests. Please retry.")
    return _arm_error(status, "InternalServerError", "Encountered internal server error.")


# -- Azure Monitor ------------------------------------------------------------------------------------------
def _split_dimensions(flt: str) -> list[str]:
    """`ModelDeploymentName eq '*' and ModelName eq '*'` -> the fixture fields to split by."""
    out = []
    for clause in flt.split(" and "):
        parts = clause.strip().split(" eq ", 1)
        name = parts[0].strip().lower()
        if name not in DIMENSIONS:
            raise ValueError(f"unknown dimension {parts[0].strip()!r}")
        out.append(name)
    return out


async def metrics(request: web.Request) -> web.Response:
    account, err = await sim_azure._arm_account(request)
    if err:
        return err
    assert account is not None
    data = state_of(request).provider_data(PROVIDER)
    if data.get("monitor_status"):
        return _outage(int(data["monitor_status"]))
    q = request.query
    if q.get("api-version") != "2024-02-01":
        return _arm_error(400, "BadRequest", "api-version 2024-02-01 is expected by this simulator")
    try:
        start_s, end_s = q["timespan"].split("/", 1)
        start, end = parse_at(start_s), parse_at(end_s)
        width = INTERVALS[q.get("interval", "PT1H")]
        names = [n.strip() for n in q["metricnames"].split(",") if n.strip()]
        dims = _split_dimensions(q["$filter"]) if q.get("$filter") else []
        top = int(q.get("top", DEFAULT_TOP))
    except (KeyError, ValueError) as exc:
        return _arm_error(400, "BadRequest", f"invalid metrics query: {exc}")
    unknown = [n for n in names if n not in METRIC_FIELDS]
    if unknown:
        return _arm_error(400, "BadRequest", f"Failed to find metric configuration for provider: "
                                             f"Microsoft.CognitiveServices, metric names: {','.join(unknown)}")
    first = floor_to(start, width)
    records = [r for r in data.get("metrics", []) if r.get("account") == account["name"]]
    m = request.match_info
    rid = resource_id(m["sub"], m["rg"], account["name"])
    value = []
    for name in names:
        series: dict[tuple[Any, ...], dict[datetime, Decimal]] = {}
        for r in records:
            at = floor_to(parse_at(r["at"]), width)
            if not first <= at < end:
                continue
            slot = series.setdefault(tuple(r.get(DIMENSIONS[d]) for d in dims), {})
            slot[at] = slot.get(at, Decimal(0)) + sum(Decimal(str(r.get(f, 0))) for f in METRIC_FIELDS[name])
        ranked = sorted(series.items(), key=lambda kv: sum(kv[1].values()), reverse=True)[:top]
        timeseries = []
        for group, points in ranked:
            rows = []
            at = first
            while at < end:
                point: dict[str, Any] = {"timeStamp": at.strftime("%Y-%m-%dT%H:%M:%SZ")}
                if at in points:
                    point["total"] = float(points[at])
                rows.append(point)
                at += width
            timeseries.append({
                "metadatavalues": [{"name": {"value": d, "localizedValue": d}, "value": v}
                                   for d, v in zip(dims, group, strict=True)],
                "data": rows,
            })
        value.append({
            "id": f"{rid}/providers/Microsoft.Insights/metrics/{name}",
            "type": "Microsoft.Insights/metrics",
            "name": {"value": name, "localizedValue": name},
            "unit": "Count",
            "timeseries": timeseries,
            "errorCode": "Success",
        })
    return json_response({
        "cost": 0,
        "timespan": q["timespan"],
        "interval": q.get("interval", "PT1H"),
        "namespace": "Microsoft.CognitiveServices/accounts",
        "resourceregion": account["location"],
        "value": value,
    })


# -- Cost Management ----------------------------------------------------------------------------------------
async def cost_query(request: web.Request) -> web.Response:
    await admit(request, PROVIDER, None)
    if bearer(request) is None:
        return _arm_error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
    data = state_of(request).provider_data(PROVIDER)
    if data.get("cost_status"):
        return _outage(int(data["cost_status"]))
    if request.query.get("api-version") != "2025-03-01":
        return _arm_error(400, "BadRequest", "api-version 2025-03-01 is expected by this simulator")
    try:
        body = await request.json()
        dataset = body["dataset"]
        period = body["timePeriod"]
        start, end = parse_at(period["from"]), parse_at(period["to"])
        groups = [g["name"] for g in dataset.get("grouping", [])]
        aggregation = dataset["aggregation"]
    except (ValueError, KeyError, TypeError) as exc:
        return _arm_error(400, "BadRequest", f"invalid QueryDefinition: {exc}")
    if body.get("type") != "ActualCost" or body.get("timeframe") != "Custom" or dataset.get("granularity") != "Daily":
        return _arm_error(400, "BadRequest", "this simulator answers ActualCost, Custom, Daily queries only")
    if not isinstance(aggregation, dict) or [a.get("function") for a in aggregation.values()] != ["Sum"]:
        return _arm_error(400, "BadRequest", "one Sum aggregation is expected")
    if set(groups) - {"ResourceId", "MeterSubcategory"} or len(groups) > 2:
        return _arm_error(400, "BadRequest", f"grouping {groups} is not supported")
    wanted = None
    flt = dataset.get("filter") or {}
    if flt:
        dim = flt.get("dimensions") or {}
        if dim.get("name") != "ResourceId" or dim.get("operator") != "In":
            return _arm_error(400, "BadRequest", "only a ResourceId In filter is supported")
        wanted = {str(v).lower() for v in dim.get("values", [])}
    m = request.match_info
    accounts = data.get("accounts", {})
    totals: dict[tuple[Any, ...], Decimal] = {}
    for r in data.get("costs", []):
        acct = accounts.get(r.get("account"), {})
        if acct.get("subscription_id") != m["sub"]:
            continue
        if m.get("rg") and str(acct.get("resource_group", "")).lower() != m["rg"].lower():
            continue
        rid = resource_id(acct["subscription_id"], acct["resource_group"], acct["name"]).lower()
        if wanted is not None and rid not in wanted:
            continue
        day = floor_to(parse_at(r["at"]), timedelta(days=1))
        if not start <= day <= end:  # Cost Management's `to` is inclusive
            continue
        by = {"ResourceId": rid, "MeterSubcategory": r.get("meter_subcategory", "")}
        k = (int(day.strftime("%Y%m%d")), *(by[g] for g in groups), r.get("currency", "USD"))
        totals[k] = totals.get(k, Decimal(0)) + Decimal(str(r["cost"]))
    column = data.get("cost_column", "Cost")
    columns = [{"name": column, "type": "Number"}, {"name": "UsageDate", "type": "Number"}]
    columns += [{"name": g, "type": "String"} for g in groups] + [{"name": "Currency", "type": "String"}]
    rows = [[dec_number(v), *k] for k, v in sorted(totals.items())]
    size = data.get("cost_page_size")
    skip = int(request.query.get("$skiptoken", "0") or 0)
    next_link = None
    if size:
        if skip + size < len(rows):
            next_link = str(request.url.update_query({"$skiptoken": str(skip + size)}))
        rows = rows[skip : skip + size]
    return json_response({
        "id": f"{request.path}/{pysecrets.token_hex(8)}",
        "name": pysecrets.token_hex(8),
        "type": "Microsoft.CostManagement/query",
        "properties": {"nextLink": next_link, "columns": columns, "rows": rows},
    })


# -- managed identity ---------------------------------------------------------------------------------------
async def identity_token(request: web.Request) -> web.Response:
    await admit(request, PROVIDER, None)
    if not request.headers.get("X-IDENTITY-HEADER"):
        return json_response({"statusCode": 400, "message": "X-IDENTITY-HEADER is missing"}, 400)
    resource = request.query.get("resource", "")
    expires = int(time.time()) + 3600
    return json_response({
        "access_token": "sim-mi-" + pysecrets.token_hex(8),
        "expires_on": str(expires),
        "resource": resource,
        "token_type": "Bearer",
        "client_id": "00000000-0000-0000-0000-000000000000",
    })


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(sim_azure.PREFIX + sim_azure.ARM_ACCOUNT + "/providers/Microsoft.Insights/metrics", metrics)
    app.router.add_post(ARM + "/subscriptions/{sub}/providers/Microsoft.CostManagement/query", cost_query)
    app.router.add_post(ARM + "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CostManagement/query",
                        cost_query)
    app.router.add_get("/azure/identity/token", identity_token)

