"""Amazon Bedrock long-term API keys (`aws_bedrock`): bearer tokens backed by IAM service-specific
credentials.

The probe is `GET https://bedrock.<region>.amazonaws.com/foundation-models` with `Authorization: Bearer <key>`
(ListFoundationModels) because:
- it costs nothing: a control-plane read, zero tokens, no model id needed (a runtime call such as
  Converse needs a model the key may use and bills tokens);
- bearer keys are accepted by Bedrock and Bedrock Runtime actions (AWS, "Use an Amazon Bedrock API key"),
  and the policy AWS attaches to a long-term key's user, AmazonBedrockLimitedAccess, allows
  `bedrock:List*` and `bedrock:CallWithBearerToken`, so a good key passes it unless someone narrowed it;
- the answer separates the key from its permissions: a rejected token is a 403 whose message says
  "Authentication failed", "Invalid API Key format" or "security token ... invalid/expired" (invalid),
  while a token that authenticates but may not list is `AccessDeniedException` "... is not authorized to
  perform ..." (forbidden).
The probe goes through keywatch's HTTP client, not boto3: botocore reads a bearer token only from the
process-wide AWS_BEARER_TOKEN_BEDROCK variable, which cannot hold one key per probe.
Management of Bedrock keys uses IAM `list_service_specific_credentials` /
`update_service_specific_credential` (Active/Inactive) with the account's credentials.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import httpx2

from keywatch.domain import Account, ManagedKey, ProbeResult, Secret
from keywatch.providers import mgmt
from keywatch.providers.aws.base import AwsBase, aware, limit_error
from keywatch.providers.aws.errors import classify_aws_error
from keywatch.providers.base import Credential, KeyMetadata, NewCredential, ProviderActionError
from keywatch.providers.errors import Refusal
from keywatch.providers.errors import retry_after as retry_after_header
from keywatch.redact import REGISTRY

BEDROCK_SERVICE = "bedrock.amazonaws.com"


def bedrock_alias(token: str) -> str | None:
    """The ServiceCredentialAlias inside a long-term key (`ABSK` + base64 of `alias:secret`), if it has one.

    The format is what clients observe, not an AWS promise (UNCONFIRMED): a token that does not decode
    simply gives no alias, and the key is then found by provider_key_id or as its user's only credential.
    """
    if not token.startswith("ABSK"):
        return None
    body = token[4:]
    try:
        text = base64.b64decode(body + "=" * (-len(body) % 4), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    alias, sep, _ = text.partition(":")
    return alias if sep and alias else None


class AwsBedrockAdapter(AwsBase):
    name = "aws_bedrock"

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._ids: dict[tuple[str, str], str] = {}

    def _base(self, key: ManagedKey) -> str:
        base = key.base_url or key.options.get("endpoint_url")
        return (base or f"https://bedrock.{self._region(key)}.amazonaws.com").rstrip("/")

    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        answer = await self.http_probe(
            key,
            f"{self._base(key)}/foundation-models",
            started=started,
            headers=lambda secret: {"Authorization": f"Bearer {secret}", "Accept": "application/json"},
            refusal=_bedrock_refusal,
            transport_detail=False,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        models = body.get("modelSummaries") if isinstance(body, dict) else None
        return self.listed(key, started, response, body, field="modelSummaries",
                           models=len(models) if isinstance(models, list) else 0)

    # -- management (IAM service-specific credentials) ---------------------------------------------
    def _user(self, key: ManagedKey) -> str:
        user = key.options.get("user_name")
        if not user:
            raise ProviderActionError(
                f"key {key.name}: managing a Bedrock API key needs user_name (the IAM user that owns it)",
                permanent=True,
            )
        return user

    async def _records(self, key: ManagedKey, account: Account) -> list[dict[str, Any]]:
        user = self._user(key)
        listed = await self._mgmt_call(
            key,
            account,
            f"list Bedrock API keys of IAM user {user}",
            lambda iam: iam.list_service_specific_credentials(UserName=user, ServiceName=BEDROCK_SERVICE),
        )
        return [r for r in listed.get("ServiceSpecificCredentials", []) if r.get("ServiceSpecificCredentialId")]

    async def _find(self, key: ManagedKey) -> tuple[Account, dict[str, Any]]:
        """The credential record of `key`: by provider_key_id, the token's alias, or its user's only one."""
        account = self.account_for(key)
        user = self._user(key)
        records = await self._records(key, account)
        wanted = key.options.get("provider_key_id") or self._ids.get((key.name, key.fingerprint))
        alias = bedrock_alias(key.secret.reveal()) if key.secret else None
        by_alias = [
            r for r in records if alias and alias in (r.get("ServiceCredentialAlias"), r.get("ServiceUserName"))
        ]
        if wanted:
            found = [r for r in records if r["ServiceSpecificCredentialId"] == wanted]
            if not found and len(by_alias) == 1:  # the configured id was retired by a rotation: the token says
                found = by_alias
        elif alias:
            found = by_alias
        else:
            found = records if len(records) == 1 else []
        if len(found) != 1:
            raise ProviderActionError(
                f"key {key.name}: which of the {len(records)} Bedrock keys of IAM user {user} is it? "
                "set provider_key_id (the ServiceSpecificCredentialId) on the key",
                permanent=True,
            )
        self._ids[(key.name, key.fingerprint)] = found[0]["ServiceSpecificCredentialId"]
        return account, found[0]

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        _, record = await self._find(key)
        details: dict[str, Any] = {"user_name": record.get("UserName")}
        expires = aware(record.get("ExpirationDate"))
        if expires is not None:
            details["expires_at"] = expires.isoformat()
        return KeyMetadata(
            provider_key_id=record["ServiceSpecificCredentialId"],
            name=record.get("ServiceCredentialAlias") or record.get("ServiceUserName"),
            status=str(record.get("Status", "")).lower() or None,
            created_at=aware(record.get("CreateDate")),
            details=details,
        )

    async def revoke(self, key: ManagedKey) -> None:
        account, record = await self._find(key)
        mgmt.require_destructive(account, key, "deleting a Bedrock API key")
        await self._on_credential(
            key, account, record, f"delete Bedrock API key {key.name}", "delete_service_specific_credential"
        )

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        account, record = await self._find(key)
        if record.get("Status") == status:
            return
        await self._on_credential(
            key,
            account,
            record,
            f"set Bedrock API key {key.name} {status}",
            "update_service_specific_credential",
            Status=status,
        )

    async def _on_credential(
        self, key: ManagedKey, account: Account, record: dict[str, Any], what: str, operation: str, **args: Any
    ) -> None:
        """IAM's `operation` on the key's service-specific credential, with `args` besides its user and id."""
        cred_id, user = record["ServiceSpecificCredentialId"], self._user(key)
        await self._mgmt_call(
            key,
            account,
            what,
            lambda iam: getattr(iam, operation)(UserName=user, ServiceSpecificCredentialId=cred_id, **args),
        )


    # -- rotation: a second service-specific credential; the old one Inactive, then deleted -----------
    async def current_credential(self, key: ManagedKey) -> Credential:
        _, record = await self._find(key)
        return _credential(record)

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        return [_credential(r) for r in await self._records(key, self.account_for(key))]

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        account, current = await self._find(key)
        user = self._user(key)
        await self._make_room(
            key, account, user, "Bedrock API keys", current["ServiceSpecificCredentialId"],
            await self.list_credentials(key), lambda cid: self.delete_credential(key, cid),
        )
        args: dict[str, Any] = {"UserName": user, "ServiceName": BEDROCK_SERVICE}
        expires, created = aware(current.get("ExpirationDate")), aware(current.get("CreateDate"))
        if expires is not None and created is not None:  # the same lifetime as the key it replaces
            args["CredentialAgeDays"] = max(1, min(36600, round((expires - created).total_seconds() / 86400)))
        try:
            answer = await self._mgmt_call(
                key, account, f"create a Bedrock API key for IAM user {user}",
                lambda iam: iam.create_service_specific_credential(**args),
            )
        except ProviderActionError as exc:
            if "LimitExceeded" not in str(exc):
                raise
            raise limit_error(user, "Bedrock API keys", current["ServiceSpecificCredentialId"],
                              await self.list_credentials(key), account, leftover=False) from None
        record = answer.get("ServiceSpecificCredential") or {}
        cred_id, token = record.get("ServiceSpecificCredentialId"), record.get("ServiceCredentialSecret")
        if not cred_id or not token:
            raise ProviderActionError(f"create a Bedrock API key for IAM user {user}: the answer carries no key")
        REGISTRY.add([token])
        return NewCredential(cred_id, Secret(token), {})

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._credential_call(key, credential_id, "Inactive")

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._credential_call(key, credential_id, "Active")

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """delete_service_specific_credential; the caller decides whether it may."""
        await self._credential_call(key, credential_id, None)

    async def _credential_call(self, key: ManagedKey, credential_id: str, status: str | None) -> None:
        account, user = self.account_for(key), self._user(key)
        if status is None:
            what, operation, args = f"delete Bedrock API key {credential_id}", "delete_service_specific_credential", {}
        else:
            what, operation = f"set Bedrock API key {credential_id} {status}", "update_service_specific_credential"
            args = {"Status": status}
        await self._mgmt_call(
            key, account, f"{what} of IAM user {user}",
            lambda iam: getattr(iam, operation)(UserName=user, ServiceSpecificCredentialId=credential_id, **args),
        )


def _credential(record: dict[str, Any]) -> Credential:
    return Credential(
        id=record["ServiceSpecificCredentialId"],
        name=record.get("ServiceCredentialAlias") or record.get("ServiceUserName"),
        status=str(record.get("Status", "")).lower() or "active",
        created_at=aware(record.get("CreateDate")),
        last_used_at=None,  # IAM reports no last use for service-specific credentials
    )


def _bedrock_refusal(response: httpx2.Response, body: Any) -> Refusal:
    code, message = _bedrock_error(response.headers, body)
    return Refusal(
        classify_aws_error(response.status_code, code, message),
        code=code,
        message=message,
        retry_after_seconds=retry_after_header(response.headers),
    )


def _bedrock_error(headers: httpx2.Headers, body: Any) -> tuple[str | None, str | None]:
    """(code, message) of a REST-JSON error: code from `x-amzn-ErrorType` or `__type`; message in any case."""
    code = headers.get("x-amzn-errortype")
    message = None
    if isinstance(body, dict):
        code = code or body.get("__type") or body.get("code")
        for field in ("message", "Message"):
            if isinstance(body.get(field), str):
                message = body[field]
                break
    if code:
        code = str(code).split(":", 1)[0].rsplit("#", 1)[-1] or None
    return code, message
