"""Anthropic: a zero-token probe on `GET /v1/models`, and key management through the Admin API.

The probe proves authentication only: exhausted credit shows on billable calls, so a key that lists
models may still be out of credit. Out of credit has been observed both as the documented 402
`billing_error` and as a 400 "credit balance is too low"; both count, any other 400 is ours to fix.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx2

from keywatch.domain import Health, ManagedKey, ProbeResult
from keywatch.providers import mgmt
from keywatch.providers.base import Credential, KeyMetadata, NewCredential, NotSupported, ProviderActionError
from keywatch.providers.errors import Refusal, anthropic_ratelimit, error_fields
from keywatch.providers.errors import retry_after as retry_after_header

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"

# Words of a refusal that is about money, not about speed: the key stays refused until someone pays.
CREDIT_WORDS = re.compile(
    r"credit balance is too low|spend(?:ing)? limit|usage limits?|purchase credits", re.IGNORECASE
)


# `error.details.error_code` values that mean money, not speed (the monthly spend cap comes as a 429).
CREDIT_CODES = frozenset({"enforced_spend_limit_reached"})


def classify_anthropic_error(
    status: int, err_type: str | None, message: str | None, detail_code: str | None = None
) -> Health:
    """The documented table plus the observed out-of-credit 400; 5xx and 529 never blame the key.

    `detail_code` is `error.details.error_code`, which the SDKs read: `enforced_spend_limit_reached` on a
    429 is the spend cap (quota_exhausted), not a rate limit, whatever the message says.
    """
    money = bool(message and CREDIT_WORDS.search(message)) or detail_code in CREDIT_CODES
    if status >= 500:
        return Health.PROVIDER_ERROR
    if status == 401:
        return Health.INVALID
    if status == 402:
        return Health.QUOTA_EXHAUSTED
    if status == 400:
        return Health.QUOTA_EXHAUSTED if money or err_type == "billing_error" else Health.PROVIDER_ERROR
    if status == 403:
        return Health.FORBIDDEN
    if status == 429:
        return Health.QUOTA_EXHAUSTED if money else Health.RATE_LIMITED
    return Health.PROVIDER_ERROR  # 404 wrong base URL, 413 ...: the probe's or the config's fault


def _headers(secret: str) -> dict[str, str]:
    return {"x-api-key": secret, "anthropic-version": API_VERSION}


def workspace_of(record: dict[str, Any]) -> str | None:
    """Older answers carry a top-level `workspace_id`; current ones `scope: {type: workspace, workspace_id}`."""
    workspace = record.get("workspace_id")
    scope = record.get("scope")
    if workspace is None and isinstance(scope, dict):
        workspace = scope.get("workspace_id")
    return workspace if isinstance(workspace, str) and workspace else None


def detail_code(body: Any) -> str | None:
    """`error.details.error_code` of an error answer, when there is one."""
    err = body.get("error") if isinstance(body, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    code = details.get("error_code") if isinstance(details, dict) else None
    return code if isinstance(code, str) else None


def _metadata(record: dict[str, Any]) -> KeyMetadata:
    details: dict[str, Any] = {"workspace_id": workspace_of(record), "partial_key_hint": record.get("partial_key_hint")}
    details = {k: v for k, v in details.items() if v is not None}
    expires = mgmt.parse_time(record.get("expires_at"))
    if expires is not None:
        details["expires_at"] = expires.isoformat()
    return KeyMetadata(
        provider_key_id=record.get("id"),
        name=record.get("name"),
        status=record.get("status"),
        created_at=mgmt.parse_time(record.get("created_at")),
        last_used_at=None,
        details=details,
    )


def _credential(record: dict[str, Any]) -> Credential:
    return Credential(
        id=str(record.get("id")),
        name=record.get("name"),
        status=str(record.get("status") or "active"),
        created_at=mgmt.parse_time(record.get("created_at")),
        last_used_at=None,  # the Admin API reports no last use
    )


NO_CREATE = (
    "no Admin API endpoint creates Anthropic API keys: a person creates the new key in the Console and puts "
    "it in the key's secret source (assisted rotation)"
)


# The Admin API's key records: `POST .../api_keys/{id}` with a status, `inactive` reversible and `archived`
# (irreversible) the way to retire one; an archived or expired key can only be archived.
ADMIN_API = mgmt.AdminApi(
    headers=_headers,
    metadata=_metadata,
    records=mgmt.Records("/v1/organizations/api_keys", id_field="id", hint_field="partial_key_hint"),
    pages=mgmt.cursor_pages(records_field="data", limit_param="limit", limit=1000, more_field="has_more",
                            last_field="last_id", after_param="after_id"),
    statuses=mgmt.status_word("status", method="POST", disabled="inactive", active="active",
                              final=("archived", "expired"), retired="archived"),
)


class AnthropicAdapter(mgmt.AdminApiAdapter):
    """Probed on the models list with the key itself; managed with the account's Admin API key."""

    name = "anthropic"

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        base = (key.base_url or DEFAULT_BASE_URL).rstrip("/")
        answer = await self.http_probe(
            key,
            f"{base}/v1/models",
            started=started,
            params={"limit": 1},
            headers=_headers,
            refusal=_refusal,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        return self.listed(key, started, response, body, ratelimit=anthropic_ratelimit(response.headers))

    # -- admin API: metadata, disable and enable as AdminApiAdapter does them -----------------------
    admin_api = ADMIN_API

    async def revoke(self, key: ManagedKey) -> None:
        """Archive the key: Anthropic offers no way back, hence the account's explicit opt-in."""
        mgmt.require_destructive(self.account_for(key), key, "archiving an Anthropic key")
        await self.set_status(key, "archived")

    # -- rotation (assisted): no create; the old key goes inactive, then archived -------------------
    async def current_credential(self, key: ManagedKey) -> Credential:
        return _credential(await self.find_record(key))

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        """The keys of `key`'s workspace (the default workspace's keys have no workspace_id)."""
        record = await self.find_record(key)
        workspace = workspace_of(record)
        return [
            _credential(r) for r in await self._list_records(key)
            if isinstance(r, dict) and r.get("id") and workspace_of(r) == workspace
        ]

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        raise NotSupported(NO_CREATE)

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._set_credential_status(key, credential_id, "inactive")

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._set_credential_status(key, credential_id, "active")

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Archive (Anthropic's only way to retire a key for good); the caller decides whether it may."""
        await self._set_credential_status(key, credential_id, "archived")

    async def _set_credential_status(self, key: ManagedKey, credential_id: str, status: str) -> None:
        path = f"{ADMIN_API.records.path}/{credential_id}"
        record = await self.admin_call(key, "GET", path, what=f"read Anthropic key {credential_id}")
        current = record.get("status") if isinstance(record, dict) else None
        if current == status:
            return
        if current in ADMIN_API.statuses.final and status != "archived":
            raise ProviderActionError(
                f"Anthropic key {credential_id} (beside {key.name}) is {current} and cannot be made {status}",
                permanent=True,
            )
        await self.admin_call(
            key, "POST", path, what=f"set Anthropic key {credential_id} {status}", json={"status": status}
        )


def _refusal(response: httpx2.Response, body: Any) -> Refusal:
    err_type, _, message = error_fields(body)
    detail = detail_code(body)
    return Refusal(
        classify_anthropic_error(response.status_code, err_type, message, detail),
        code=detail or err_type,
        message=message,
        ratelimit=anthropic_ratelimit(response.headers),
        retry_after_seconds=retry_after_header(response.headers),
    )
