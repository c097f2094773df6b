"""Anthropic usage and cost reports under /anthropic/v1/organizations (Admin API, admin key).

Fixtures: state.admin["anthropic"] "usage", "costs", "page_size", "usage_status" (see usage_openai.py).
Cost amounts are DECIMAL STRINGS IN CENTS, as the real API gives them: "123.45" is $1.2345.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aiohttp import web

from keywatch.sim.common import json_response, state_of
from keywatch.sim.routes import anthropic as sim_anthropic
from keywatch.sim.routes.usage_openai import (
    DEFAULT_LIMITS,
    MAX_LIMITS,
    WIDTHS,
    BadParameter,
    Rules,
    buckets,
    group_params,
    page_of,
    window,
)
from keywatch.sim.state import SimState

PREFIX = "/anthropic/v1/organizations/usage_report+cost_report"  # a label for the mount check


USAGE = Rules("starting_at", "ending_at", ("1m", "1h", "1d"),
              ("api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo"),
              MAX_LIMITS, DEFAULT_LIMITS, unix_times=False)
COSTS = Rules("starting_at", "ending_at", ("1d",), ("workspace_id", "description"), {"1d": 31}, {"1d": 7},
              unix_times=False)


def _rfc3339(at: Any) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def _usage_summary(rs: list[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    return {
        "uncached_input_tokens": sum(int(r.get("uncached_input_tokens", 0)) for r in rs),
        "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
        "cache_read_input_tokens": sum(int(r.get("cache_read_input_tokens", 0)) for r in rs),
        "output_tokens": sum(int(r.get("output_tokens", 0)) for r in rs),
        "server_tool_use": {"web_search_requests": 0},
        "api_key_id": group.get("api_key_id"),
        "workspace_id": group.get("workspace_id"),
        "model": group.get("model"),
        "service_tier": group.get("service_tier"),
        "context_window": group.get("context_window"),
    }


def _cost_summary(rs: list[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    cents = sum((Decimal(str(r["amount"])) for r in rs), Decimal(0))
    return {
        "currency": "USD",
        "amount": str(cents),
        "workspace_id": group.get("workspace_id"),
        "description": group.get("description"),
        "cost_type": "tokens",
        "context_window": None,
        "model": None,
        "service_tier": None,
        "token_type": None,
    }


def _bad(bad: BadParameter) -> web.Response:
    """Anthropic's envelope for a refused parameter (`invalid_request_error`, the parameter named first)."""
    message = json.loads(bad.text or "{}")["error"]["message"]
    return sim_anthropic.error(400, "invalid_request_error", f"{bad.param}: {message}")


async def _checks(request: web.Request) -> web.Response | None:
    refused = await sim_anthropic._admin(request)
    if refused is not None:
        return refused
    status = state_of(request).provider_data("anthropic").get("usage_status")
    if status:
        return sim_anthropic.error(int(status), "api_error", "Internal server error")
    return None


def _page(request: web.Request, all_buckets: list[Any], limit: int, cap: int | None) -> web.Response:
    chunk, nxt = page_of(request, all_buckets, limit, cap)
    width = WIDTHS[request.query.get("bucket_width", "1d")]
    data = [{"starting_at": _rfc3339(at), "ending_at": _rfc3339(at + width), "results": results}
            for at, results in chunk]
    return json_response({"data": data, "has_more": nxt is not None, "next_page": nxt})


async def usage_messages(request: web.Request) -> web.Response:
    refused = await _checks(request)
    if refused is not None:
        return refused
    data = state_of(request).provider_data("anthropic")
    try:
        start, end, width, limit = window(request, USAGE)
    except BadParameter as bad:
        return _bad(bad)
    found = buckets(data.get("usage", []), start, end, WIDTHS[width], group_params(request), _usage_summary)
    return _page(request, found, limit, data.get("page_size"))


async def cost_report(request: web.Request) -> web.Response:
    refused = await _checks(request)
    if refused is not None:
        return refused
    data = state_of(request).provider_data("anthropic")
    try:
        start, end, _, limit = window(request, COSTS)
    except BadParameter as bad:
        return _bad(bad)
    found = buckets(data.get("costs", []), start, end, WIDTHS["1d"], group_params(request), _cost_summary)
    return _page(request, found, limit, data.get("page_size"))


def register(app: web.Application, state: SimState) -> None:
    org = "/anthropic/v1/organizations"
    app.router.add_get(f"{org}/usage_report/messages", usage_messages)
    app.router.add_get(f"{org}/cost_report", cost_report)
