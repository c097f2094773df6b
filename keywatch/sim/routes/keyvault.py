"""Azure Key Vault's secrets data plane under /secrets: what azure-keyvault-secrets calls.

The vault URL is the simulator's own URL (the SDK parses ids as `<vault>/secrets/<name>/<version>`, so a
vault cannot sit under a path; the host:port names the vault). The SDK insists on https, so tests serve the
simulator's app over TLS (aiohttp TCPSite with an ssl context, a certificate made at test time). Authentication is Key
Vault's challenge: a request without a bearer token gets 401 with
`WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"`;
the SDK then asks its credential for a token and repeats the request. Any bearer token is accepted unless
tokens are set (`state.provider_data("keyvault")["tokens"]`, a set); an unknown one gets 401 Unauthorized.

Secrets keep every version (PUT adds one; the latest is the last created). GET of a disabled version is
403 `Forbidden` / `SecretDisabled`, as Key Vault answers, also when that version is the latest. Set
`state.provider_data("keyvault")["down"] = True` to answer 503 to everything (a vault outage).
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from aiohttp import web

from keywatch.sim.common import bearer, json_response, state_of
from keywatch.sim.state import SimState

PREFIX = "/secrets"
SECRET_STORE = True  # not a provider: `keywatch sim` prints no base URL for it
PROVIDER = "keyvault"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
_order = itertools.count()


def _vaults(state: SimState) -> dict[str, dict[str, list[dict[str, Any]]]]:
    return state.provider_data(PROVIDER).setdefault("vaults", {})


def error(status: int, code: str, message: str, inner: str | None = None,
          headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if inner:
        body["error"]["innererror"] = {"code": inner}
    return json_response(body, status, headers)


def _gate(request: web.Request) -> web.Response | None:
    state = state_of(request)
    data = state.provider_data(PROVIDER)
    state.count(PROVIDER, request.match_info.route.resource.canonical, None, time.time())
    if data.get("down"):
        return error(503, "ServiceUnavailable", "The service is unavailable.")
    token = bearer(request)
    if token is None:
        return error(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.",
                     headers={"WWW-Authenticate": CHALLENGE})
    tokens = data.get("tokens")
    if tokens is not None and token not in tokens:
        return error(401, "Unauthorized", "AKV10022: Invalid audience or token.",
                     headers={"WWW-Authenticate": CHALLENGE})
    return None


def _base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _bundle(request: web.Request, name: str, v: dict[str, Any], *, value: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"{_base(request)}/secrets/{name}/{v['version']}",
        "attributes": {"enabled": v["enabled"], "created": v["created"], "updated": v["updated"],
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
        "tags": dict(v["tags"]),
    }
    if v.get("contentType"):
        out["contentType"] = v["contentType"]
    if value:
        out["value"] = v["value"]
    return out


def _versions(request: web.Request) -> tuple[str, list[dict[str, Any]] | None]:
    name = request.match_info["name"]
    return name, _vaults(state_of(request)).get(request.host, {}).get(name)


def _not_found(name: str, version: str = "") -> web.Response:
    what = f"{name}/{version}" if version else name
    return error(404, "SecretNotFound", f"A secret with (name/id) {what} was not found in this key vault. "
                 "If you recently deleted this secret you may be able to recover it using the correct recovery "
                 "command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182")


async def set_secret(request: web.Request) -> web.Response:
    if (denied := _gate(request)) is not None:
        return denied
    try:
        body = await request.json()
    except ValueError:
        return error(400, "BadParameter", "The request body is not valid JSON.")
    if not isinstance(body, dict) or not isinstance(body.get("value"), str):
        return error(400, "BadParameter", "Property 'value' is required.")
    name = request.match_info["name"]
    now = int(time.time())
    attributes = body.get("attributes") or {}
    v = {"version": uuid.uuid4().hex, "value": body["value"], "tags": dict(body.get("tags") or {}),
         "enabled": attributes.get("enabled", True) is not False, "created": now, "updated": now,
         "contentType": body.get("contentType"), "order": next(_order)}
    _vaults(state_of(request)).setdefault(request.host, {}).setdefault(name, []).append(v)
    return json_response(_bundle(request, name, v, value=True), 200)


def _find(versions: list[dict[str, Any]], version: str) -> dict[str, Any] | None:
    if not version:
        return max(versions, key=lambda v: v["order"])
    return next((v for v in versions if v["version"] == version), None)


async def get_secret(request: web.Request) -> web.Response:
    if (denied := _gate(request)) is not None:
        return denied
    name, versions = _versions(request)
    version = request.match_info.get("version", "")
    v = _find(versions, version) if versions else None
    if v is None:
        return _not_found(name, version)
    if not v["enabled"]:
        return error(403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled")
    return json_response(_bundle(request, name, v, value=True), 200)


async def update_secret(request: web.Request) -> web.Response:
    if (denied := _gate(request)) is not None:
        return denied
    name, versions = _versions(request)
    version = request.match_info.get("version", "")
    v = _find(versions, version) if versions else None
    if v is None:
        return _not_found(name, version)
    body = await request.json()
    attributes = body.get("attributes") or {}
    if "enabled" in attributes and attributes["enabled"] is not None:
        v["enabled"] = bool(attributes["enabled"])
    if body.get("tags") is not None:
        v["tags"] = dict(body["tags"])
    if body.get("contentType") is not None:
        v["contentType"] = body["contentType"]
    v["updated"] = int(time.time())
    return json_response(_bundle(request, name, v, value=False), 200)


async def list_versions(request: web.Request) -> web.Response:
    if (denied := _gate(request)) is not None:
        return denied
    name, versions = _versions(request)
    if not versions:
        return _not_found(name)
    items = [_bundle(request, name, v, value=False) for v in sorted(versions, key=lambda v: v["order"])]
    return json_response({"value": items, "nextLink": None}, 200)


def register(app: web.Application, state: SimState) -> None:
    base = PREFIX + "/{name}"
    app.router.add_put(base, set_secret)
    app.router.add_get(base + "/versions", list_versions)
    app.router.add_get(base, get_secret)
    app.router.add_get(base + "/", get_secret)
    app.router.add_get(base + "/{version}", get_secret)
    app.router.add_patch(base + "/{version}", update_secret)
