"""AWS: IAM access key pairs (`aws_iam`) and Amazon Bedrock long-term API keys (`aws_bedrock`).

IAM key pairs are probed with `sts.get_caller_identity`, the one AWS call no policy can deny, so the
answer is about the key alone: a bad key id is `InvalidClientTokenId`, a bad secret
`SignatureDoesNotMatch`. With management credentials on an `[[accounts]]` entry the adapter also reads
the key's status and last use, deactivates and re-activates it (`update_access_key`), and looks for the
`AWSCompromisedKeyQuarantine*` managed policy that AWS attaches to a user when it finds one of its keys
exposed: that is a compromise signal, reported on the probe result (at most once per user every
`quarantine_check_interval` seconds, cached), so `check --json`, `status` and /metrics all show it.

Bedrock long-term API keys are bearer tokens backed by IAM service-specific credentials. The probe is
`GET https://bedrock.<region>.amazonaws.com/foundation-models` with `Authorization: Bearer <key>`
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

boto3 is synchronous: its calls run in a worker thread, clients are built once per (service,
credentials, region, endpoint) and reused, with short timeouts and no retries, so a probe stays inside
the probe timeout. boto3 is imported only inside methods: this module imports without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult
from keywatch.providers import mgmt
from keywatch.providers.base import (
    KeyMetadata,
    ProviderActionError,
    ProviderAdapter,
)
from keywatch.providers.errors import Refusal
from keywatch.providers.errors import retry_after as retry_after_header
from keywatch.redact import redact_text

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
QUARANTINE_PREFIX = "AWSCompromisedKeyQuarantine"
BEDROCK_SERVICE = "bedrock.amazonaws.com"

# Error codes of AWS's query and JSON protocols, by what they say about the credential.
INVALID_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "IncompleteSignature",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "AuthFailure",
        "MissingAuthenticationToken",
    }
)
FORBIDDEN_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
THROTTLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
    }
)
# Management errors after which retrying cannot help until a person changes something.
PERMANENT_CODES = (
    INVALID_CODES
    | FORBIDDEN_CODES
    | frozenset(
        {
            "NoSuchEntity",
            "NoSuchEntityException",
            "ValidationError",
            "InvalidInput",
            "LimitExceeded",
        }
    )
)

# Words of a Bedrock 403 that rejects the token itself (observed bodies: {"Message": "Authentication failed:
# Please make sure your API Key is valid."}, {"Message": "Invalid API Key format: Must start with pre-defined
# prefix"}, {"message": "The security token included in the request is invalid."}).
BEDROCK_INVALID_WORDS = re.compile(
    r"authentication failed|invalid api key|api key is (?:invalid|expired)|security token included in the "
    r"request is (?:invalid|expired)|bearer token .*(?:invalid|expired)|token has expired|is expired",
    re.IGNORECASE,
)
BEDROCK_FORBIDDEN_WORDS = re.compile(r"not authorized to perform|explicit deny|access denied", re.IGNORECASE)


def classify_aws_error(status: int | None, code: str | None, message: str | None = None) -> Health:
    """One table for the query (STS, IAM) and JSON (Bedrock) protocols; 5xx never blames the key."""
    if status is not None and status >= 500:
        return Health.PROVIDER_ERROR
    if code in THROTTLE_CODES or status == 429:
        return Health.RATE_LIMITED
    if code in INVALID_CODES:
        return Health.INVALID
    if code in FORBIDDEN_CODES:
        return Health.FORBIDDEN
    if status in (401, 403):
        if message and BEDROCK_FORBIDDEN_WORDS.search(message):
            return Health.FORBIDDEN
        if message and BEDROCK_INVALID_WORDS.search(message):
            return Health.INVALID
        return Health.INVALID if status == 401 else Health.FORBIDDEN
    return Health.PROVIDER_ERROR  # 400 InvalidAction, 404 wrong endpoint ...: configuration, not the key


def user_from_arn(arn: str | None) -> str | None:
    """`arn:aws:iam::123456789012:user/path/name` -> `name`; roles and federated users have no IAM user."""
    if not arn:
        return None
    _, _, resource = arn.partition(":iam::")
    _, _, rest = resource.partition(":")
    if not rest.startswith("user/"):
        return None
    return rest.rsplit("/", 1)[-1] or None


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


class _Boto:
    """Clients built once per (service, credentials, region, endpoint) and calls run off the event loop."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._clients: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def client(
        self,
        service: str,
        *,
        access_key_id: str | None,
        secret: str | None,
        region: str,
        endpoint: str | None,
        fingerprint: str = "",
    ) -> Any:
        cache_key = (service, access_key_id or "", fingerprint, region, endpoint or "")
        with self._lock:
            client = self._clients.get(cache_key)
            if client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=min(5.0, self.timeout),
                    read_timeout=self.timeout,
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    user_agent_extra="keywatch",
                )
                session = boto3.session.Session()  # sessions are not thread-safe; one per client
                client = session.client(
                    service,
                    region_name=region,
                    endpoint_url=endpoint,
                    config=config,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret,
                )
                self._clients[cache_key] = client
        return client

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()


def _client_error_parts(exc: BaseException) -> tuple[int | None, str | None, str | None]:
    response = getattr(exc, "response", None) or {}
    err = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    return meta.get("HTTPStatusCode"), err.get("Code"), err.get("Message")


def _is_client_error(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def _is_transport_error(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    return isinstance(
        exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError
    )


class _AwsBase(ProviderAdapter):
    """Management credentials and the IAM client both AWS adapters share."""

    # Both manage their keys through IAM, with the same reach: read, (de)activate, delete.

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._boto = _Boto(self.timeout)

    def _region(self, key: ManagedKey, account: Account | None = None) -> str:
        return (
            key.options.get("region")
            or (account.options.get("region") if account else None)
            or DEFAULT_REGION
        )

    def _mgmt_account(self, key: ManagedKey) -> Account | None:
        """The account that manages `key`, or None when none is configured (probe-only use)."""
        if key.account and key.account in self.accounts:
            return self.accounts[key.account]
        matches = [a for a in self.accounts.values() if a.provider == self.name]
        return matches[0] if len(matches) == 1 and not key.account else None

    def _iam(self, key: ManagedKey, account: Account) -> Any:
        """IAM with the account's credentials; without them, boto3's own chain (instance role ...)."""
        access_key_id = account.options.get("access_key_id")
        secret = account.admin_secret.reveal() if account.admin_secret else None
        if secret and not access_key_id:
            raise ProviderActionError(
                f"account {account.name}: admin_secret needs access_key_id (the management key's id)",
                permanent=True,
            )
        return self._boto.client(
            "iam",
            access_key_id=access_key_id,
            secret=secret,
            region=self._region(key, account),
            endpoint=account.options.get("endpoint_url") or account.base_url,
            fingerprint=account.admin_secret.fingerprint if account.admin_secret else "",
        )

    def _secrets(self, key: ManagedKey, account: Account | None = None) -> list[str]:
        out = [key.secret.reveal()] if key.secret else []
        if account and account.admin_secret:
            out.append(account.admin_secret.reveal())
        return out

    async def _mgmt_call(self, key: ManagedKey, account: Account, what: str, fn: Callable[[Any], T]) -> T:
        """One IAM management call; its failure is a ProviderActionError with an honest `permanent` flag."""
        try:
            return await self._boto.run(lambda: fn(self._iam(key, account)))
        except ProviderActionError:
            raise
        except Exception as exc:
            raise self._action_error(key, account, what, exc) from None

    def _action_error(
        self, key: ManagedKey, account: Account, what: str, exc: BaseException
    ) -> ProviderActionError:
        secrets = self._secrets(key, account)
        if _is_client_error(exc):
            status, code, message = _client_error_parts(exc)
            text = redact_text(f"{what}: {code or 'error'} {message or ''}".strip()[:400], secrets)
            return ProviderActionError(
                text,
                permanent=code in PERMANENT_CODES
                or (status is not None and 400 <= status < 500 and code not in THROTTLE_CODES),
                status=status,
            )
        if _is_transport_error(exc):
            return ProviderActionError(f"{what}: cannot reach AWS ({type(exc).__name__})", permanent=False)
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return ProviderActionError(
                f"{what}: no AWS management credentials (set access_key_id and admin_secret on account "
                f"{account.name}, or give the daemon an instance role)",
                permanent=True,
            )
        return ProviderActionError(redact_text(f"{what}: {type(exc).__name__}: {exc}"[:400], secrets))

    async def disable(self, key: ManagedKey) -> None:
        await self._set_status(key, "Inactive")

    async def enable(self, key: ManagedKey) -> None:
        await self._set_status(key, "Active")

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        """IAM's own words: `Inactive` stops the credential and `Active` restores it, both reversible."""
        raise NotImplementedError

    async def aclose(self) -> None:
        self._boto.clear()


class AwsIamAdapter(_AwsBase):
    name = "aws_iam"
    quarantine_check_interval: float = 600.0

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._users: dict[str, str] = {}  # access key id -> IAM user name
        self._quarantine: dict[
            tuple[str, str], tuple[float, str | None]
        ] = {}  # (account, user) -> (at, policy)

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        access_key_id = key.options.get("access_key_id")
        if key.secret is None or not access_key_id:
            return self.result(
                key,
                Health.PROVIDER_ERROR,
                started,
                error_code="no_secret",
                error_message="the key needs access_key_id and secret (the secret access key)",
            )
        try:
            secret = key.secret

            def call() -> Any:  # building a client takes tens of ms: off the event loop too
                return self._boto.client(
                    "sts",
                    access_key_id=access_key_id,
                    secret=secret.reveal(),
                    region=self._region(key),
                    endpoint=key.options.get("endpoint_url"),
                    fingerprint=secret.fingerprint,
                ).get_caller_identity()

            identity = await self._boto.run(call)
        except Exception as exc:
            result = self._probe_error(key, started, exc)
        else:
            user = user_from_arn(identity.get("Arn"))
            if user:
                self._users[access_key_id] = user
            result = self.result(
                key,
                Health.HEALTHY,
                started,
                http_status=200,
                aws_account=identity.get("Account"),
                user_name=user,
            )
        left = self.timeout - (time.perf_counter() - started)
        try:  # the signal is worth having, but not at the price of a probe that overruns its timeout
            async with asyncio.timeout(max(0.5, left)):
                return await self._with_compromise(key, result)
        except TimeoutError:
            return replace(
                result, details={**result.details, "compromise_check": "skipped: probe time used up"}
            )

    def _probe_error(self, key: ManagedKey, started: float, exc: BaseException) -> ProbeResult:
        if _is_client_error(exc):
            status, code, message = _client_error_parts(exc)
            return self.result(
                key,
                classify_aws_error(status, code, message),
                started,
                http_status=status,
                error_code=code,
                error_message=message,
            )
        if _is_transport_error(exc):
            code = "timeout" if "Timeout" in type(exc).__name__ else "connect_error"
            return self.result(
                key,
                Health.UNREACHABLE,
                started,
                error_code=code,
                error_message=f"{type(exc).__name__}: cannot reach the AWS endpoint",
            )
        return self.result(
            key, Health.PROVIDER_ERROR, started, error_code=type(exc).__name__, error_message=str(exc)
        )

    async def _with_compromise(self, key: ManagedKey, result: ProbeResult) -> ProbeResult:
        """Add the quarantine-policy signal when management credentials exist; never fails the probe."""
        account = self._mgmt_account(key)
        if account is None:
            return result
        try:
            user = await self._user(key, account)
            policy = await self._quarantine_policy(key, account, user)
        except ProviderActionError as exc:
            return replace(result, details={**result.details, "compromise_check": str(exc)})
        if policy is None:
            return result
        return replace(
            result,
            compromised=True,
            compromise_reason=f"AWS attached {policy} to IAM user {user}: AWS found this user's key exposed",
        )

    async def _quarantine_policy(self, key: ManagedKey, account: Account, user: str) -> str | None:
        slot = (account.name, user)
        cached = self._quarantine.get(slot)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.quarantine_check_interval:
            return cached[1]

        def read(iam: Any) -> str | None:
            pages = iam.get_paginator("list_attached_user_policies").paginate(UserName=user)
            for page in pages:
                for p in page.get("AttachedPolicies", []):
                    if str(p.get("PolicyName", "")).startswith(QUARANTINE_PREFIX):
                        return str(p["PolicyName"])
            return None

        try:
            policy = await self._mgmt_call(key, account, f"list policies of IAM user {user}", read)
        except ProviderActionError:
            if cached is not None:
                return cached[1]  # the last answer stands while IAM cannot be asked
            raise
        self._quarantine[slot] = (now, policy)
        return policy

    # -- management -------------------------------------------------------------------------------
    async def _user(self, key: ManagedKey, account: Account) -> str:
        """The IAM user owning the key: configured, learned from a probe, or asked of IAM."""
        access_key_id = self._key_id(key)
        user = key.options.get("user_name") or self._users.get(access_key_id)
        if user:
            return user
        answer = await self._mgmt_call(
            key,
            account,
            f"find the IAM user of key {key.name}",
            lambda iam: iam.get_access_key_last_used(AccessKeyId=access_key_id),
        )
        user = answer.get("UserName")
        if not user:
            raise ProviderActionError(
                f"key {key.name}: IAM does not name the key's user; set user_name on the key", permanent=True
            )
        self._users[access_key_id] = user
        return user

    def _key_id(self, key: ManagedKey) -> str:
        access_key_id = key.options.get("access_key_id")
        if not access_key_id:
            raise ProviderActionError(f"key {key.name}: access_key_id is not set", permanent=True)
        return access_key_id

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        account = self.account_for(key)
        access_key_id = self._key_id(key)
        user = await self._user(key, account)
        listed = await self._mgmt_call(
            key,
            account,
            f"list access keys of IAM user {user}",
            lambda iam: iam.list_access_keys(UserName=user),
        )
        record = next(
            (m for m in listed.get("AccessKeyMetadata", []) if m.get("AccessKeyId") == access_key_id), None
        )
        if record is None:
            raise ProviderActionError(
                f"key {key.name}: IAM user {user} has no access key {access_key_id}", permanent=True
            )
        used = await self._mgmt_call(
            key,
            account,
            f"read last use of key {key.name}",
            lambda iam: iam.get_access_key_last_used(AccessKeyId=access_key_id),
        )
        last = used.get("AccessKeyLastUsed") or {}
        policy = await self._quarantine_policy(key, account, user)
        details = {"user_name": user}
        if last.get("ServiceName") and last.get("ServiceName") != "N/A":
            details["last_used_service"] = last["ServiceName"]
            details["last_used_region"] = last.get("Region")
        return KeyMetadata(
            provider_key_id=access_key_id,
            name=user,
            status=str(record.get("Status", "")).lower() or None,
            created_at=_aware(record.get("CreateDate")),
            last_used_at=_aware(last.get("LastUsedDate")),
            compromised=policy is not None,
            compromise_reason=f"{policy} is attached to IAM user {user}" if policy else None,
            details=details,
        )

    async def revoke(self, key: ManagedKey) -> None:
        """Delete the key pair: AWS offers no way back, hence the account's explicit opt-in."""
        account = self.account_for(key)
        mgmt.require_destructive(account, key, "deleting an AWS access key")
        access_key_id, user = self._key_id(key), await self._user(key, account)
        await self._mgmt_call(
            key,
            account,
            f"delete access key of {key.name}",
            lambda iam: iam.delete_access_key(UserName=user, AccessKeyId=access_key_id),
        )

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        account = self.account_for(key)
        access_key_id, user = self._key_id(key), await self._user(key, account)
        await self._mgmt_call(
            key,
            account,
            f"set access key of {key.name} {status}",
            lambda iam: iam.update_access_key(UserName=user, AccessKeyId=access_key_id, Status=status),
        )


class AwsBedrockAdapter(_AwsBase):
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

    async def _find(self, key: ManagedKey) -> tuple[Account, dict[str, Any]]:
        """The credential record of `key`: by provider_key_id, the token's alias, or its user's only one."""
        account = self.account_for(key)
        user = self._user(key)
        listed = await self._mgmt_call(
            key,
            account,
            f"list Bedrock API keys of IAM user {user}",
            lambda iam: iam.list_service_specific_credentials(UserName=user, ServiceName=BEDROCK_SERVICE),
        )
        records = [
            r for r in listed.get("ServiceSpecificCredentials", []) if r.get("ServiceSpecificCredentialId")
        ]
        wanted = key.options.get("provider_key_id") or self._ids.get((key.name, key.fingerprint))
        alias = bedrock_alias(key.secret.reveal()) if key.secret else None
        if wanted:
            found = [r for r in records if r["ServiceSpecificCredentialId"] == wanted]
        elif alias:
            found = [
                r
                for r in records
                if r.get("ServiceCredentialAlias") == alias or r.get("ServiceUserName") == alias
            ]
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
        expires = _aware(record.get("ExpirationDate"))
        if expires is not None:
            details["expires_at"] = expires.isoformat()
        return KeyMetadata(
            provider_key_id=record["ServiceSpecificCredentialId"],
            name=record.get("ServiceCredentialAlias") or record.get("ServiceUserName"),
            status=str(record.get("Status", "")).lower() or None,
            created_at=_aware(record.get("CreateDate")),
            details=details,
        )

    async def revoke(self, key: ManagedKey) -> None:
        account, record = await self._find(key)
        mgmt.require_destructive(account, key, "deleting a Bedrock API key")
        cred_id, user = record["ServiceSpecificCredentialId"], self._user(key)
        await self._mgmt_call(
            key,
            account,
            f"delete Bedrock API key {key.name}",
            lambda iam: iam.delete_service_specific_credential(
                UserName=user, ServiceSpecificCredentialId=cred_id
            ),
        )

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        account, record = await self._find(key)
        if record.get("Status") == status:
            return
        cred_id, user = record["ServiceSpecificCredentialId"], self._user(key)
        await self._mgmt_call(
            key,
            account,
            f"set Bedrock API key {key.name} {status}",
            lambda iam: iam.update_service_specific_credential(
                UserName=user, ServiceSpecificCredentialId=cred_id, Status=status
            ),
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


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return mgmt.parse_time(value)
