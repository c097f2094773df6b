"""AWS Health under /aws-health: the two calls keywatch reads AWS_RISK_CREDENTIALS_EXPOSED events with
(moto has no Health service). The AWS JSON 1.1 protocol: POST with `X-Amz-Target:
AWSHealth_20160804.DescribeEvents` or `...DescribeAffectedEntities`; signatures are not checked.

Management data: state.admin["aws_health"]["events"]: [{"arn", "eventTypeCode", "statusCode", "entities":
[access key ids]}]; `plant_exposure(state, access_key_id)` adds one. `subscription_required` (True): every
call answers SubscriptionRequiredException, as for an account without a Business support plan.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from keywatch.sim.common import state_of
from keywatch.sim.state import SimState

PREFIX = "/aws-health"
PROVIDER = "aws_health"
EVENT = "AWS_RISK_CREDENTIALS_EXPOSED"
JSON = "application/x-amz-json-1.1"


def plant_exposure(state: SimState, access_key_id: str, *, status: str = "open") -> str:
    arn = f"arn:aws:health:global::event/RISK/{EVENT}/{EVENT}_{uuid.uuid4().hex[:12]}"
    state.provider_data(PROVIDER).setdefault("events", []).append(
        {"arn": arn, "eventTypeCode": EVENT, "statusCode": status, "entities": [access_key_id]}
    )
    return arn


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.Response(
        status=status, body=json.dumps({"__type": kind, "message": message}).encode(), content_type=JSON
    )


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), content_type=JSON)


async def handle(request: web.Request) -> web.Response:
    state = state_of(request)
    data = state.provider_data(PROVIDER)
    state.count(PROVIDER, "health", None, 0.0, used=False)
    if data.get("subscription_required"):
        return _error(400, "SubscriptionRequiredException", "The AWS Health API requires a Business support plan")
    target = request.headers.get("X-Amz-Target", "")
    try:
        body: dict[str, Any] = json.loads(await request.read() or b"{}")
    except ValueError:
        return _error(400, "SerializationException", "not JSON")
    flt = body.get("filter") or {}
    events = data.get("events", [])
    if target.endswith(".DescribeEvents"):
        codes, statuses = flt.get("eventTypeCodes"), flt.get("eventStatusCodes")
        out = [
            {
                "arn": e["arn"],
                "service": "RISK",
                "eventTypeCode": e["eventTypeCode"],
                "eventTypeCategory": "issue",
                "region": "global",
                "statusCode": e["statusCode"],
            }
            for e in events
            if (not codes or e["eventTypeCode"] in codes) and (not statuses or e["statusCode"] in statuses)
        ]
        return _ok({"events": out})
    if target.endswith(".DescribeAffectedEntities"):
        arns = set(flt.get("eventArns") or [])
        out = [
            {"entityArn": f"{e['arn']}/{v}", "eventArn": e["arn"], "entityValue": v, "statusCode": "IMPAIRED"}
            for e in events
            if e["arn"] in arns
            for v in e["entities"]
        ]
        return _ok({"entities": out})
    return _error(400, "UnknownOperationException", f"unknown operation {target[:80]}")


def register(app: web.Application, state: SimState) -> None:
    app.router.add_post(PREFIX, handle)
