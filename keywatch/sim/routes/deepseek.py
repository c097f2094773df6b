"""DeepSeek under /deepseek: `GET /user/balance`, the only key-level API, which keywatch uses as its probe.

Bodies follow the provider's documented API. Per-key knobs in SimKey.extra:
  currency (CNY default), total_balance/granted_balance/topped_up_balance (decimal strings),
  quota_status (None default: quota_exhausted shows as is_available false with a zero balance on a 200;
  402: "Insufficient Balance"), retry_after (s, rate_limited).
`bad_body` answers 200 with an OpenAI-style list, as a local OpenAI-compatible server would.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keywatch.sim.common import admit, bearer, json_response, retry_after
from keywatch.sim.state import SimKey, SimState

PREFIX = "/deepseek"
PROVIDER = "deepseek"


def error(
    status: int, message: str, err_type: str, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return json_response(body, status, headers)


def wrong_key(secret: str | None) -> web.Response:
    tail = secret[-4:] if secret and len(secret) > 8 else ""
    return error(
        401,
        f"Authentication Fails, Your api key: ****{tail} is invalid",
        "authentication_error",
        "invalid_request_error",
    )


def behaviour_error(key: SimKey) -> web.Response | None:
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated", "admin"):
        return wrong_key(key.secret)
    if b in ("forbidden", "missing_scope"):
        return error(403, "Permission denied", "permission_error", "permission_denied")
    if b in ("quota_exhausted", "billing_not_active") and key.extra.get("quota_status") == 402:
        return error(402, "Insufficient Balance", "unknown_error", "invalid_request_error")
    if b == "rate_limited":
        wait = float(key.extra.get("retry_after", 1))
        return error(
            429,
            "Rate Limit Reached",
            "rate_limit_error",
            "rate_limit_exceeded",
            {"retry-after": retry_after(wait)},
        )
    if b == "server_error":
        return error(500, "Server Error", "server_error", "internal_error")
    if b == "overloaded":
        return error(503, "Server Overloaded", "server_error", "overloaded")
    return None


def balance_body(key: SimKey) -> dict[str, Any]:
    extra = key.extra
    exhausted = key.behaviour in ("quota_exhausted", "billing_not_active")
    zero = "0.00"
    info = {
        "currency": extra.get("currency", "CNY"),
        "total_balance": zero if exhausted else str(extra.get("total_balance", "110.00")),
        "granted_balance": zero if exhausted else str(extra.get("granted_balance", "10.00")),
        "topped_up_balance": zero if exhausted else str(extra.get("topped_up_balance", "100.00")),
    }
    return {"is_available": not exhausted, "balance_infos": [info]}


async def user_balance(request: web.Request) -> web.Response:
    secret = bearer(request)
    key = await admit(request, PROVIDER, secret)
    if key is None:
        return wrong_key(secret)
    refused = behaviour_error(key)
    if refused is not None:
        return refused
    if key.behaviour == "bad_body":
        return json_response({"object": "list", "data": []})
    return json_response(balance_body(key))


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(f"{PREFIX}/user/balance", user_balance)
