"""AWS under /aws: only what moto lacks, as small as it can be.

- `GET /aws/bedrock/foundation-models` (bedrock ListFoundationModels) with `Authorization: Bearer <key>`:
  the Bedrock API key probe. Keys are SimKeys with provider "aws_bedrock". Error bodies follow what
  clients report from AWS: 403 `{"Message": "Authentication failed: Please make sure your API Key is valid."}`
  for a rejected (unknown, expired, deactivated) long-term key, 403 `{"Message": "Invalid API Key format:
  Must start with pre-defined prefix"}` for a token that is not a Bedrock key at all, 403
  AccessDeniedException "... is not authorized to perform: bedrock:ListFoundationModels ..." for a key
  whose user may not list, 429 ThrottlingException, 500 InternalServerException, 503
  ServiceUnavailableException (the error name in `x-amzn-ErrorType`, as AWS's REST-JSON services send it).
- `POST /aws/iam/` (IAM query protocol): Create/List/Update/DeleteServiceSpecificCredential, which moto
  does not implement. A credential set Inactive is refused by the probe above, so deactivation can be
  shown end to end. Requests must carry a SigV4 Authorization header; the signature is not verified.
- `POST /aws/sts/` (GetCallerIdentity) for the answers moto cannot give: SimKeys with provider "aws_sts"
  whose secret is the access key id; behaviours invalid (InvalidClientTokenId), forbidden (AccessDenied),
  rate_limited (400 Throttling), server_error (500 InternalFailure), overloaded (503 ServiceUnavailable),
  plus the transport behaviours (hang, slow, disconnect).
Management data: state.admin["aws_bedrock"]["credentials"][credential id] = credential record + "token".
"""

from __future__ import annotations

import base64
import secrets as pysecrets
from datetime import UTC, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from keywatch.sim.common import admit, bearer, json_response, request_id, state_of
from keywatch.sim.state import SimKey, SimState

PREFIX = "/aws"
BEDROCK = "aws_bedrock"
STS = "aws_sts"
ACCOUNT_ID = "123456789012"
IAM_NS = "https://iam.amazonaws.com/doc/2010-05-08/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"

AUTH_FAILED = "Authentication failed: Please make sure your API Key is valid."
BAD_FORMAT = "Invalid API Key format: Must start with pre-defined prefix"
MODELS = (
    ("anthropic.claude-3-haiku-20240307-v1:0", "Claude 3 Haiku", "Anthropic"),
    ("amazon.nova-micro-v1:0", "Nova Micro", "Amazon"),
)


def _credentials(state: SimState) -> dict[str, dict[str, Any]]:
    return state.provider_data(BEDROCK).setdefault("credentials", {})


def _json_error(status: int, err_type: str | None, message: str, field: str = "message") -> web.Response:
    headers = {"x-amzn-RequestId": request_id()}
    if err_type:
        headers["x-amzn-ErrorType"] = f"{err_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return json_response({field: message}, status, headers)


def rejected() -> web.Response:
    return _json_error(403, None, AUTH_FAILED, field="Message")


async def foundation_models(request: web.Request) -> web.Response:
    token = bearer(request)
    key = await admit(request, BEDROCK, token)
    if token is None:
        return _json_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    if key is None or key.provider != BEDROCK:
        return _json_error(
            403, None, BAD_FORMAT if not token.startswith("ABSK") else AUTH_FAILED, field="Message"
        )
    cred = next((c for c in _credentials(state_of(request)).values() if c.get("token") == token), None)
    if cred is not None and cred.get("Status") != "Active":
        return rejected()
    b = key.behaviour
    if b in ("invalid", "deactivated", "account_deactivated"):
        return rejected()
    if b in ("forbidden", "missing_scope"):
        user = cred.get("UserName") if cred else "BedrockAPIKey-sim"
        return _json_error(
            403,
            "AccessDeniedException",
            f"User: arn:aws:iam::{ACCOUNT_ID}:user/{user} is not authorized to perform: "
            "bedrock:ListFoundationModels because no identity-based policy allows the "
            "bedrock:ListFoundationModels action",
        )
    if b in ("rate_limited", "quota_exhausted"):
        return _json_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
    if b == "server_error":
        return _json_error(
            500, "InternalServerException", "An internal server error occurred. Retry your request."
        )
    if b == "overloaded":
        return _json_error(503, "ServiceUnavailableException", "Service Unavailable. Please try again later.")
    if b == "bad_body":
        return json_response({"unexpected": True})
    summaries = [
        {
            "modelId": mid,
            "modelName": name,
            "providerName": provider,
            "modelArn": f"arn:aws:bedrock:us-east-1::foundation-model/{mid}",
            "outputModalities": ["TEXT"],
        }
        for mid, name, provider in MODELS
    ]
    return json_response({"modelSummaries": summaries}, headers={"x-amzn-RequestId": request_id()})


# -- IAM query protocol ------------------------------------------------------------------------------
def _xml(action: str, result: str, ns: str = IAM_NS) -> web.Response:
    body = (
        f'<{action}Response xmlns="{ns}"><{action}Result>{result}</{action}Result>'
        f"<ResponseMetadata><RequestId>{request_id()}</RequestId></ResponseMetadata></{action}Response>"
    )
    return web.Response(text=body, content_type="text/xml")


def _xml_error(status: int, code: str, message: str, ns: str = IAM_NS, kind: str = "Sender") -> web.Response:
    body = (
        f'<ErrorResponse xmlns="{ns}"><Error><Type>{kind}</Type><Code>{code}</Code>'
        f"<Message>{escape(message)}</Message></Error><RequestId>{request_id()}</RequestId></ErrorResponse>"
    )
    return web.Response(text=body, status=status, content_type="text/xml")


def _signed_key_id(request: web.Request) -> str | None:
    """The access key id of a SigV4 `Authorization` header (`Credential=AKID/date/region/svc/...`)."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256"):
        return None
    _, _, rest = auth.partition("Credential=")
    return rest.split("/", 1)[0] or None


def _member(cred: dict[str, Any]) -> str:
    fields = (
        "UserName",
        "Status",
        "ServiceUserName",
        "ServiceCredentialAlias",
        "CreateDate",
        "ExpirationDate",
        "ServiceSpecificCredentialId",
        "ServiceName",
    )
    return (
        "<member>"
        + "".join(f"<{f}>{escape(str(cred[f]))}</{f}>" for f in fields if cred.get(f) is not None)
        + "</member>"
    )


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def create_credential(state: SimState, user: str, days: int | None = None) -> dict[str, Any]:
    """A new Bedrock long-term key for `user`: `ABSK` + base64(alias:secret), healthy to the probe."""
    alias = f"BedrockAPIKey-{pysecrets.token_hex(2)}-at-{ACCOUNT_ID}"
    secret_part = pysecrets.token_urlsafe(30)
    token = "ABSK" + base64.b64encode(f"{alias}:{secret_part}".encode()).decode()
    now = datetime.now(UTC)
    cred = {
        "UserName": user,
        "Status": "Active",
        "ServiceUserName": alias,
        "ServiceCredentialAlias": alias,
        "CreateDate": _iso(now),
        "ServiceSpecificCredentialId": "ACCA" + pysecrets.token_hex(8).upper(),
        "ServiceName": "bedrock.amazonaws.com",
        "token": token,
    }
    if days:
        cred["ExpirationDate"] = _iso(now + timedelta(days=days))
    _credentials(state)[cred["ServiceSpecificCredentialId"]] = cred
    state.created(SimKey(token, BEDROCK))
    return cred


async def iam(request: web.Request) -> web.Response:
    form = await request.post()
    action = str(form.get("Action", ""))
    state = state_of(request)
    await admit(request, BEDROCK, None)
    if _signed_key_id(request) is None:
        return _xml_error(403, "MissingAuthenticationToken", "Request is missing Authentication Token")
    creds = _credentials(state)
    user = str(form.get("UserName", ""))
    if action == "CreateServiceSpecificCredential":
        days = int(str(form["CredentialAgeDays"])) if form.get("CredentialAgeDays") else None
        if sum(1 for c in creds.values() if c["UserName"] == user) >= 2:
            return _xml_error(
                409, "LimitExceeded", "Cannot exceed quota for ServiceSpecificCredentialsPerUserPerService: 2"
            )
        cred = create_credential(state, user, days)
        inner = _member(cred).replace("<member>", "").replace("</member>", "")
        inner += f"<ServiceCredentialSecret>{escape(cred['token'])}</ServiceCredentialSecret>"
        return _xml(action, f"<ServiceSpecificCredential>{inner}</ServiceSpecificCredential>")
    if action == "ListServiceSpecificCredentials":
        service = form.get("ServiceName")
        rows = [
            c
            for c in creds.values()
            if c["UserName"] == user and (not service or c["ServiceName"] == service)
        ]
        return _xml(
            action,
            "<ServiceSpecificCredentials>" + "".join(map(_member, rows)) + "</ServiceSpecificCredentials>",
        )
    if action in ("UpdateServiceSpecificCredential", "DeleteServiceSpecificCredential"):
        cred = creds.get(str(form.get("ServiceSpecificCredentialId", "")))
        if cred is None or cred["UserName"] != user:
            return _xml_error(
                404, "NoSuchEntity", "The service-specific credential with the given id cannot be found."
            )
        if action == "UpdateServiceSpecificCredential":
            status = str(form.get("Status", ""))
            if status not in ("Active", "Inactive"):
                return _xml_error(400, "ValidationError", "Status must be Active or Inactive")
            cred["Status"] = status
        else:
            del creds[cred["ServiceSpecificCredentialId"]]
            state.keys.pop(cred["token"], None)
        return _xml(action, "")
    return _xml_error(
        400,
        "InvalidAction",
        f"Could not find operation {action} in this fake (see keywatch.sim.routes.bedrock)",
    )


# -- STS error injection -----------------------------------------------------------------------------
STS_ERRORS = {
    "invalid": (
        403,
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
        "Sender",
    ),
    "deactivated": (
        403,
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
        "Sender",
    ),
    "forbidden": (403, "AccessDenied", "User is not authorized to perform: sts:GetCallerIdentity", "Sender"),
    "rate_limited": (400, "Throttling", "Rate exceeded", "Sender"),
    "server_error": (
        500,
        "InternalFailure",
        "The request processing has failed because of an unknown error.",
        "Receiver",
    ),
    "overloaded": (503, "ServiceUnavailable", "Service is unable to handle request.", "Receiver"),
}


async def sts(request: web.Request) -> web.Response:
    form = await request.post()
    key_id = _signed_key_id(request)
    key = await admit(request, STS, key_id)
    if key is None or key.provider != STS:
        return _xml_error(403, *STS_ERRORS["invalid"][1:3], ns=STS_NS)
    if form.get("Action") != "GetCallerIdentity":
        return _xml_error(400, "InvalidAction", "only GetCallerIdentity is simulated", ns=STS_NS)
    if key.behaviour in STS_ERRORS:
        status, code, message, kind = STS_ERRORS[key.behaviour]
        return _xml_error(status, code, message, ns=STS_NS, kind=kind)
    if key.behaviour == "bad_body":
        return web.Response(text="<html>not xml</html", content_type="text/html")
    user = key.extra.get("user_name", "sim-user")
    result = (
        f"<UserId>AIDA{key_id[4:16] if key_id else ''}</UserId><Account>{ACCOUNT_ID}</Account>"
        f"<Arn>arn:aws:iam::{ACCOUNT_ID}:user/{escape(str(user))}</Arn>"
    )
    return _xml("GetCallerIdentity", result, ns=STS_NS)


def register(app: web.Application, state: SimState) -> None:
    app.router.add_get(f"{PREFIX}/bedrock/foundation-models", foundation_models)
    for path in (f"{PREFIX}/iam", f"{PREFIX}/iam/"):
        app.router.add_post(path, iam)
    for path in (f"{PREFIX}/sts", f"{PREFIX}/sts/"):
        app.router.add_post(path, sts)
