"""Moonshot (Kimi) under /moonshot/v1: `GET /users/me/balance`, which keywatch uses as its probe.

Bodies follow the provider's documented API. Per-key knobs in SimKey.extra:
  available_balance/voucher_balance/cash_balance (numbers), quota_status (None default: quota_exhausted
  shows as available_balance 0 on a 200; 429: exceeded_current_quota_error), retry_after (s, rate_limited).
`bad_body` answers 200 with an OpenAI-style list, as a local OpenAI-compatible server would.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keywatch.sim.common import admit, bearer, json_response, retry_after
from keywatch.sim.state import SimKey, SimState

PREFIX = "/moonshot"
PROVIDER = "moonshot"


def error(status: int, message: str, err_type: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": {"message": message, "type": err_type}}, status, headers)


def wrong_key() -> web.Response:
    return error(401, "Invalid Authentication", "invalid_authentication_error")


def behaviour_error(key: SimKey) -> web.Response | None:
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated", "admin"):
        return wrong_key()
    if b in ("forbidden", "missing_scope"):
        return error(403, "The API you are accessing is not open", "permission_denied_error")
    if b in ("quota_exhausted", "billing_not_active") and key.extra.get("quota_status") == 429:
        return error(
            429,
            "Your account is suspended, please check your plan and billing details",
            "exceeded_current_quota_error",
        )
    if b == "rate_limited":
        wait = float(key.extra.get("retry_after", 1))
        return error(
            429,
            "Your account reached max request: 3, please try again after 1 seconds",
            "rate_limit_reached_error",
            {"retry-after": retry_after(wait)},
        )
    if b == "server_error":
        return error(500, "Unexpected server error", "server_error")
    if b == "overloaded":
        return error(
            429, "The engine is currently overloaded, please try again later", "engine_overloaded_error"
        )
    return None


def balance_body(key: SimKey) -> dict[str, Any]:
    extra = key.extra
    if key.behaviour in ("quota_exhausted", "billing_not_active"):
        data = {"available_balance": 0, "voucher_balance": 0, "cash_balance": 0}
    else:
        data = {
            "available_balance": extra.get("available_balance", 49.58894),
            "voucher_balance": extra.get("voucher_balance", 46.58893),
            "cash_balance": extra.get("cash_balance", 3.00001),
        }
    return {"code": 0, "data": data, "scode": "0x0", "status": True}


async def balance(request: web.Request) -> web.Response:
    key = await admit(request, PROVIDER, bearer(request))
    if key is None:
        return wrong_key()
    refused = behaviour_error(key)
    if refused is not None:
        return refused
    if key.behaviour == "bad_body":
        return json_response({"object": "list", "data": []})
    return json_response(balance_body(key))


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(f"{PREFIX}/v1/users/me/balance", balance)
