"""OpenAI usage and costs under /openai/v1/organization (Admin API, admin key), plus the `/_sim/usage` control API.

Fixtures live in state.admin[<provider>] and are set with `POST /_sim/usage/<provider>` (JSON object; its
fields replace the stored ones) or directly through SimulatorThread.call():
  usage: [{"at": unix s or RFC 3339, "api_key_id", "project_id", "model", "input_tokens", "output_tokens",
           "input_cached_tokens", "num_model_requests"}]  (Anthropic: "workspace_id", "uncached_input_tokens",
           "cache_read_input_tokens", "output_tokens")
  costs: [{"at", "project_id", "api_key_id", "line_item", "amount": "1.23" (USD; Anthropic: cents string),
           "currency"}]  (Anthropic: "workspace_id", "description")
  spend_limit_cents (OpenAI), page_size (caps buckets per page, to exercise paging),
  usage_status (answer every usage/cost request with this HTTP status: a provider outage).
`POST /_sim/usage/<provider>/series` appends a generated hourly series to `usage` (`seasonal_usage`: a daily
curve with noise, optionally a spike of `spike_factor` times the usual figure in the hour at `spike_at`).
Records are summed into the requested buckets and grouped by the requested group_by fields, as the APIs do;
empty buckets are listed too. Amounts are summed as Decimal.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from keywatch.sim.common import json_response, state_of
from keywatch.sim.routes import openai as sim_openai
from keywatch.sim.state import SimState

PREFIX = "/openai/v1/organization/usage+costs"  # a label for the mount check; routes are listed in register()
WIDTHS = {"1m": timedelta(minutes=1), "1h": timedelta(hours=1), "1d": timedelta(days=1)}
DEFAULT_LIMITS = {"1m": 60, "1h": 24, "1d": 7}
MAX_LIMITS = {"1m": 1440, "1h": 168, "1d": 31}


def parse_at(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        if value.isdigit():
            return datetime.fromtimestamp(int(value), UTC)
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    raise ValueError(f"not a time: {value!r}")


def floor_to(at: datetime, width: timedelta) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((at - epoch) // width) * width


def group_params(request: web.Request) -> list[str]:
    return request.query.getall("group_by[]", []) + request.query.getall("group_by", [])


def buckets(
    records: list[dict[str, Any]],
    start: datetime,
    end: datetime,
    width: timedelta,
    group_by: list[str],
    summarise: Callable[[list[dict[str, Any]], dict[str, Any]], dict[str, Any]],
) -> list[tuple[datetime, list[dict[str, Any]]]]:
    """[(bucket start, [result per group])] for every bucket in [start, end)."""
    by_bucket: dict[datetime, list[dict[str, Any]]] = {}
    first = floor_to(start, width)
    for r in records:
        at = floor_to(parse_at(r["at"]), width)
        if first <= at < end:
            by_bucket.setdefault(at, []).append(r)
    out = []
    at = first
    while at < end:
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in by_bucket.get(at, ()):
            groups.setdefault(tuple(r.get(g) for g in group_by), []).append(r)
        out.append((at, [summarise(rs, dict(zip(group_by, g, strict=True))) for g, rs in groups.items()]))
        at += width
    return out


def page_of(request: web.Request, items: list[Any], limit: int, cap: int | None) -> tuple[list[Any], str | None]:
    size = min(limit, cap) if cap else limit
    raw = request.query.get("page")
    offset = int(raw.removeprefix("page_")) if raw and raw.removeprefix("page_").isdigit() else 0
    chunk = items[offset : offset + size]
    nxt = f"page_{offset + size}" if offset + size < len(items) else None
    return chunk, nxt


class Rules:
    """What a usage or cost route accepts, as the provider's reference says; anything else is refused with 400
    naming the parameter (the real APIs refuse a bad enum value, a limit out of range, a missing start)."""

    def __init__(self, start: str, end: str, widths: tuple[str, ...], group_by: tuple[str, ...],
                 max_limits: dict[str, int], default_limits: dict[str, int], unix_times: bool) -> None:
        self.start, self.end, self.widths, self.group_by = start, end, widths, group_by
        self.max_limits, self.default_limits, self.unix_times = max_limits, default_limits, unix_times


OPENAI_USAGE = Rules("start_time", "end_time", ("1m", "1h", "1d"),
                     ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier"),
                     MAX_LIMITS, DEFAULT_LIMITS, unix_times=True)
OPENAI_COSTS = Rules("start_time", "end_time", ("1d",), ("project_id", "line_item", "api_key_id"),
                     {"1d": 180}, {"1d": 7}, unix_times=True)


class BadParameter(web.HTTPBadRequest):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(text=json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                                    "param": param, "code": None}}),
                         content_type="application/json")
        self.param = param


def _time(request: web.Request, name: str, unix: bool) -> datetime:
    raw = request.query[name]
    try:
        if unix:
            if not raw.lstrip("-").isdigit():
                raise ValueError(raw)
            return datetime.fromtimestamp(int(raw), UTC)
        if raw.isdigit():
            raise ValueError(raw)
        return parse_at(raw)
    except (ValueError, OverflowError, OSError):
        what = "an integer (unix seconds)" if unix else "an RFC 3339 date-time"
        raise BadParameter(name, f"Invalid value for '{name}': expected {what}.") from None


def window(request: web.Request, rules: Rules) -> tuple[datetime, datetime, str, int]:
    """(start, end, bucket width, limit) of a usage or cost request, refused as the provider refuses it."""
    if rules.start not in request.query:
        raise BadParameter(rules.start, f"Missing required parameter: '{rules.start}'.")
    start = _time(request, rules.start, rules.unix_times)
    end = _time(request, rules.end, rules.unix_times) if rules.end in request.query else datetime.now(UTC)
    width = request.query.get("bucket_width", "1d")
    if width not in rules.widths:
        raise BadParameter("bucket_width", f"Invalid value for 'bucket_width': {width!r}; expected one of "
                                           f"{', '.join(rules.widths)}.")
    for field in group_params(request):
        if field not in rules.group_by:
            raise BadParameter("group_by", f"Invalid value for 'group_by': {field!r}; expected any of "
                                           f"{', '.join(rules.group_by)}.")
    raw = request.query.get("limit")
    high = rules.max_limits[width]
    if raw is None:
        limit = rules.default_limits[width]
    elif not raw.isdigit() or not 1 <= int(raw) <= high:
        raise BadParameter("limit", f"Invalid value for 'limit': {raw!r}; with bucket_width {width} it is an "
                                    f"integer from 1 to {high}.")
    else:
        limit = int(raw)
    if end <= start:
        raise BadParameter(rules.end, f"'{rules.end}' must be after '{rules.start}'.")
    return start, end, width, limit


def dec_number(d: Decimal) -> float:
    """A JSON number that reads back as `d` (shortest float repr: exact for up to 15 significant digits)."""
    return float(d)


# --- OpenAI -----------------------------------------------------------------------------------------------
def _usage_summary(rs: list[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"object": "organization.usage.completions.result"}
    for f in ("input_tokens", "output_tokens", "input_cached_tokens", "input_audio_tokens", "output_audio_tokens",
              "num_model_requests"):
        out[f] = sum(int(r.get(f, 0)) for r in rs)
    for f in ("project_id", "user_id", "api_key_id", "model", "batch", "service_tier"):
        out[f] = group.get(f)
    return out


def _cost_summary(rs: list[dict[str, Any]], group: dict[str, Any]) -> dict[str, Any]:
    total = sum((Decimal(str(r["amount"])) for r in rs), Decimal(0))
    return {
        "object": "organization.costs.result",
        "amount": {"value": dec_number(total), "currency": rs[0].get("currency", "usd")},
        "line_item": group.get("line_item"),
        "project_id": group.get("project_id"),
        "api_key_id": group.get("api_key_id"),
        "quantity": None,
        "quantity_unit": None,
    }


async def _guard(request: web.Request, provider: str) -> web.Response | None:
    data = state_of(request).provider_data(provider)
    status = data.get("usage_status")
    if status:
        return json_response({"error": {"message": "The server had an error while processing your request.",
                                        "type": "server_error", "param": None, "code": None}}, int(status))
    return None


async def openai_usage(request: web.Request) -> web.Response:
    _, refused = await sim_openai._admin(request)
    if refused is not None:
        return refused
    failed = await _guard(request, "openai")
    if failed is not None:
        return failed
    data = state_of(request).provider_data("openai")
    start, end, width, limit = window(request, OPENAI_USAGE)
    all_buckets = buckets(data.get("usage", []), start, end, WIDTHS[width], group_params(request), _usage_summary)
    return _openai_page(request, all_buckets, limit, data.get("page_size"), "organization.usage.completions")


async def openai_costs(request: web.Request) -> web.Response:
    _, refused = await sim_openai._admin(request)
    if refused is not None:
        return refused
    failed = await _guard(request, "openai")
    if failed is not None:
        return failed
    data = state_of(request).provider_data("openai")
    start, end, _, limit = window(request, OPENAI_COSTS)
    all_buckets = buckets(data.get("costs", []), start, end, WIDTHS["1d"], group_params(request), _cost_summary)
    return _openai_page(request, all_buckets, limit, data.get("page_size"), "organization.costs")


def _openai_page(request: web.Request, all_buckets: list[Any], limit: int, cap: int | None, _: str) -> web.Response:
    chunk, nxt = page_of(request, all_buckets, limit, cap)
    width = WIDTHS[request.query.get("bucket_width", "1d")]
    data = [
        {"object": "bucket", "start_time": int(at.timestamp()), "end_time": int((at + width).timestamp()),
         "results": results}
        for at, results in chunk
    ]
    return json_response({"object": "page", "data": data, "has_more": nxt is not None, "next_page": nxt})


async def openai_spend_limit(request: web.Request) -> web.Response:
    _, refused = await sim_openai._admin(request)
    if refused is not None:
        return refused
    cents = state_of(request).provider_data("openai").get("spend_limit_cents")
    if cents is None:
        return sim_openai._not_found("No spend limit is set for this organization.")
    return json_response({"object": "organization.spend_limit", "threshold_amount": int(cents), "currency": "USD",
                          "interval": "month", "enforcement": {"status": "active"}})


# --- generated series -------------------------------------------------------------------------------------
def seasonal_usage(
    start: datetime, end: datetime, *, api_key_id: str, project_id: str, model: str = "gpt-4o-mini",
    requests_per_hour: float = 120.0, tokens_per_request: int = 400, spike_at: datetime | None = None,
    spike_factor: float = 20.0, seed: int = 1,
) -> list[dict[str, Any]]:
    """One usage record per hour in [start, end): requests follow a daily curve (busy at 14:00 UTC, a fifth
    of it at 02:00, weekends at 60%) with +-15% noise; the hour holding `spike_at` carries `spike_factor`
    times its usual figures (a leaked key in use)."""
    rng = random.Random(seed)
    out = []
    at = floor_to(start, WIDTHS["1h"])
    spike = floor_to(spike_at, WIDTHS["1h"]) if spike_at is not None else None
    while at < end:
        daily = 0.6 - 0.4 * math.cos((at.hour - 2) / 24 * 2 * math.pi)
        weekly = 0.6 if at.weekday() >= 5 else 1.0
        n = requests_per_hour * daily * weekly * rng.uniform(0.85, 1.15)
        if at == spike:
            n *= spike_factor
        requests = max(0, round(n))
        out.append({"at": int(at.timestamp()), "api_key_id": api_key_id, "project_id": project_id, "model": model,
                    "input_tokens": requests * tokens_per_request * 3 // 4,
                    "output_tokens": requests * tokens_per_request // 4, "num_model_requests": requests})
        at += WIDTHS["1h"]
    return out


MAX_SERIES_DAYS = 400
SERIES_FIELDS = ("start", "end", "api_key_id", "project_id", "model", "requests_per_hour", "tokens_per_request",
                 "spike_at", "spike_factor", "seed")


async def post_series(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_response({"error": "body must be JSON"}, 400)
    if not isinstance(payload, dict):
        return json_response({"error": "body must be a JSON object"}, 400)
    unknown = sorted(set(payload) - set(SERIES_FIELDS))
    missing = [f for f in ("start", "end", "api_key_id", "project_id") if f not in payload]
    if unknown or missing:
        return json_response({"error": f"unknown fields {unknown}, missing {missing}; valid: {list(SERIES_FIELDS)}"},
                             400)
    try:
        args = dict(payload)
        for name in ("start", "end", "spike_at"):
            if args.get(name) is not None:
                args[name] = parse_at(args[name])
        for name in ("requests_per_hour", "tokens_per_request", "spike_factor", "seed"):
            if name in args and (isinstance(args[name], bool) or not isinstance(args[name], int | float)):
                raise ValueError(f"{name}: expected a number")
        for name in ("api_key_id", "project_id", "model"):
            if name in args and not isinstance(args[name], str):
                raise ValueError(f"{name}: expected a string")
        if args["end"] - args["start"] > timedelta(days=MAX_SERIES_DAYS):
            raise ValueError(f"at most {MAX_SERIES_DAYS} days of hourly records at a time")
        records = seasonal_usage(**args)
    except (ValueError, TypeError, OverflowError) as exc:
        return json_response({"error": f"bad series: {exc}"}, 400)
    data = state_of(request).provider_data(provider)
    data["usage"] = list(data.get("usage") or []) + records
    return json_response({"provider": provider, "records": len(records)})


# --- control API -------------------------------------------------------------------------------------------
FIXTURE_FIELDS = ("usage", "costs", "spend_limit_cents", "page_size", "usage_status")


async def post_fixtures(request: web.Request) -> web.Response:
    provider = request.match_info["provider"]
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_response({"error": "body must be JSON"}, 400)
    if not isinstance(payload, dict):
        return json_response({"error": "body must be a JSON object"}, 400)
    unknown = sorted(set(payload) - set(FIXTURE_FIELDS))
    if unknown:
        return json_response({"error": f"unknown fields {unknown}; valid: {list(FIXTURE_FIELDS)}"}, 400)
    for name in ("usage", "costs"):
        for i, r in enumerate(payload.get(name) or []):
            try:
                parse_at(r["at"])
            except (KeyError, ValueError, TypeError):
                return json_response({"error": f"{name}[{i}].at: expected unix seconds or RFC 3339"}, 400)
    set_fixtures(state_of(request), provider, **payload)
    return json_response({"provider": provider, "set": sorted(payload)})


def set_fixtures(state: SimState, provider: str, **fields: Any) -> None:
    """Replace the given fixture fields of `provider` (call on the simulator's loop)."""
    state.provider_data(provider).update(fields)


async def delete_fixtures(request: web.Request) -> web.Response:
    data = state_of(request).provider_data(request.match_info["provider"])
    for f in FIXTURE_FIELDS:
        data.pop(f, None)
    return json_response({"cleared": True})


def register(app: web.Application, state: SimState) -> None:
    org = "/openai/v1/organization"
    app.router.add_get(f"{org}/usage/completions", openai_usage)
    app.router.add_get(f"{org}/costs", openai_costs)
    app.router.add_get(f"{org}/spend_limit", openai_spend_limit)
    app.router.add_post("/_sim/usage/{provider}", post_fixtures)
    app.router.add_post("/_sim/usage/{provider}/series", post_series)
    app.router.add_delete("/_sim/usage/{provider}", delete_fixtures)
