"""Azure OpenAI under /azure: the data-plane probe and the ARM subset keywatch manages accounts with.

Data plane: `GET /azure/<resource>/openai/models?api-version=...` with the `api-key` header, so a key's
endpoint is `<sim>/azure/<resource>`. Keys are SimKeys with provider "azure_openai". Bodies follow
the provider's documented API: a wrong or unknown key gets 401 "Access denied due to invalid subscription
key or wrong API endpoint ..." (extra code_word="Unauthorized" gives the variant code); rate_limited a 429
"Please retry after N seconds" with retry-after N (extra retry_after, default 2; extra short_form=True
gives "Rate limit is exceeded. Try again in N seconds."); quota_exhausted the same 429 with 86400 seconds;
forbidden 403 (network rules); server_error 500; overloaded 503; bad_body a 200 that is not a list.
Healthy answers carry x-ratelimit-* headers.

ARM: `/azure/arm/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/
{name}` (GET), `/listKeys` (POST), `/regenerateKey` (POST {"keyName": "Key1"|"Key2"}), `/usages` (GET), so an
account's base_url is `<sim>/azure/arm`. Any bearer token is accepted (none: 401 AuthenticationFailed).
Accounts live in state.admin["azure_openai"]["accounts"][name]; add them with add_account().
state.admin["azure_openai"]["arm_behaviour"] = "server_error" | "forbidden" makes ARM itself fail.
Regenerating a key removes the old value at once, as Azure does.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import Any

from aiohttp import web

from keywatch.sim.common import admit, bearer, header_secret, json_response, request_id, state_of
from keywatch.sim.state import SimKey, SimState

PREFIX = "/azure"
PROVIDER = "azure_openai"
ARM_ACCOUNT = (
    "/arm/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{name}"
)
INVALID_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")


def new_key() -> str:
    return pysecrets.token_hex(16)  # legacy 32-hex form


def _data(state: SimState) -> dict[str, Any]:
    return state.provider_data(PROVIDER)


def add_account(
    state: SimState,
    name: str,
    *,
    subscription_id: str = "sub-1",
    resource_group: str = "rg-1",
    endpoint: str = "",
    location: str = "eastus",
    disable_local_auth: bool = False,
    usages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """An account with two fresh healthy keys (call on the simulator's loop)."""
    account = {
        "name": name,
        "subscription_id": subscription_id,
        "resource_group": resource_group,
        "endpoint": endpoint,
        "location": location,
        "disable_local_auth": disable_local_auth,
        "key1": new_key(),
        "key2": new_key(),
        "usages": usages
        if usages is not None
        else [
            {
                "name": {
                    "value": "OpenAI.Standard.gpt-4o",
                    "localizedValue": "Tokens Per Minute (thousands) - GPT-4o",
                },
                "unit": "Count",
                "currentValue": 30,
                "limit": 450,
                "status": "Included",
            },
        ],
    }
    for slot in ("key1", "key2"):
        state.upsert(SimKey(account[slot], PROVIDER, extra={"resource": name}))
    _data(state).setdefault("accounts", {})[name] = account
    return account


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"apim-request-id": request_id(), "x-ms-region": "East US"}
    all_headers.update(headers or {})
    return json_response({"error": {"code": code, "message": message}}, status, all_headers)


def _ratelimit(limited: bool) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "0" if limited else "99",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": "0" if limited else "99000",
    }


def _too_many(key: SimKey, seconds: int) -> web.Response:
    if key.extra.get("short_form"):
        message = f"Rate limit is exceeded. Try again in {seconds} seconds."
    else:
        message = (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
            "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{seconds} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to "
            "further increase the default rate limit."
        )
    return _error(429, "429", message, {"retry-after": str(seconds), **_ratelimit(True)})


async def models(request: web.Request) -> web.Response:
    secret = header_secret(request, "api-key")
    key = await admit(request, PROVIDER, secret)
    if key is None or key.provider != PROVIDER:
        return _error(401, "401", INVALID_MESSAGE)
    if key.extra.get("resource") not in (None, request.match_info["resource"]):
        return _error(
            401, "401", INVALID_MESSAGE
        )  # another resource's key: Azure cannot tell either case apart
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated"):
        return _error(401, str(key.extra.get("code_word", "401")), INVALID_MESSAGE)
    if b == "rate_limited":
        return _too_many(key, int(key.extra.get("retry_after", 2)))
    if b in ("quota_exhausted", "billing_not_active"):
        return _too_many(key, 86400)
    if b in ("forbidden", "missing_scope"):
        return _error(
            403,
            "AuthenticationTypeDisabled" if key.extra.get("local_auth_disabled") else "403",
            "Key based authentication is disabled for this resource."
            if key.extra.get("local_auth_disabled")
            else "Traffic is not from an approved private endpoint.",
        )
    if b == "server_error":
        return _error(500, "InternalServerError", "The server had an error while processing your request.")
    if b == "overloaded":
        return _error(503, "ServiceUnavailable", "The service is temporarily unable to process your request.")
    if b == "bad_body":
        return json_response({"unexpected": True})
    data = [
        {
            "id": m,
            "object": "model",
            "status": "succeeded",
            "created_at": 1715558400,
            "capabilities": {"chat_completion": True},
        }
        for m in MODELS
    ]
    return json_response(
        {"data": data, "object": "list"}, headers={"apim-request-id": request_id(), **_ratelimit(False)}
    )


# -- ARM ----------------------------------------------------------------------------------------------
def _arm_error(status: int, code: str, message: str) -> web.Response:
    return json_response(
        {"error": {"code": code, "message": message}}, status, {"x-ms-request-id": request_id()}
    )


async def _arm_account(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
    await admit(request, PROVIDER, None)
    if bearer(request) is None:
        return None, _arm_error(
            401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
        )
    data = _data(state_of(request))
    behaviour = data.get("arm_behaviour")
    if behaviour == "server_error":
        return None, _arm_error(500, "InternalServerError", "Encountered internal server error.")
    if behaviour == "forbidden":
        return None, _arm_error(
            403,
            "AuthorizationFailed",
            "The client does not have authorization to perform action "
            "'Microsoft.CognitiveServices/accounts/listKeys/action' over scope '...'.",
        )
    m = request.match_info
    account = data.get("accounts", {}).get(m["name"])
    if (
        account is None
        or account["subscription_id"] != m["sub"]
        or account["resource_group"].lower() != m["rg"].lower()
    ):
        return None, _arm_error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.CognitiveServices/accounts/{m['name']}' under "
            f"resource group '{m['rg']}' was not found.",
        )
    return account, None


def _account_body(account: dict[str, Any], request: web.Request) -> dict[str, Any]:
    m = request.match_info
    return {
        "id": f"/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/"
        f"Microsoft.CognitiveServices/accounts/{account['name']}",
        "name": account["name"],
        "type": "Microsoft.CognitiveServices/accounts",
        "kind": "OpenAI",
        "location": account["location"],
        "sku": {"name": "S0"},
        "properties": {
            "endpoint": account["endpoint"],
            "provisioningState": "Succeeded",
            "disableLocalAuth": account["disable_local_auth"],
        },
    }


async def arm_get(request: web.Request) -> web.Response:
    account, err = await _arm_account(request)
    return err or json_response(_account_body(account, request))  # type: ignore[arg-type]


async def arm_list_keys(request: web.Request) -> web.Response:
    account, err = await _arm_account(request)
    if err:
        return err
    assert account is not None
    return json_response({"key1": account["key1"], "key2": account["key2"]})


async def arm_regenerate(request: web.Request) -> web.Response:
    account, err = await _arm_account(request)
    if err:
        return err
    assert account is not None
    try:
        body = await request.json()
    except ValueError:
        body = None
    slot = str((body or {}).get("keyName", "")).lower()
    if slot not in ("key1", "key2"):
        return _arm_error(400, "InvalidKeyName", "keyName must be Key1 or Key2.")
    state = state_of(request)
    state.keys.pop(account[slot], None)
    account[slot] = new_key()
    state.created(SimKey(account[slot], PROVIDER, extra={"resource": account["name"]}))
    return json_response({"key1": account["key1"], "key2": account["key2"]})


async def arm_usages(request: web.Request) -> web.Response:
    account, err = await _arm_account(request)
    if err:
        return err
    assert account is not None
    return json_response({"value": account["usages"]})


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(PREFIX + "/{resource}/openai/models", models)
    base = PREFIX + ARM_ACCOUNT
    app.router.add_get(base, arm_get)
    app.router.add_post(base + "/listKeys", arm_list_keys)
    app.router.add_post(base + "/regenerateKey", arm_regenerate)
    app.router.add_get(base + "/usages", arm_usages)
