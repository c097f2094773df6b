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

from keywatch.domain import Account, Health, ManagedKey, ProbeResult
from keywatch.providers import mgmt
from keywatch.providers.base import (
    KeyMetadata,
    ProviderActionError,
    ProviderAdapter,
)
from keywatch.providers.errors import Refusal, anthropic_ratelimit, error_fields
from keywatch.providers.errors import retry_after as retry_after_header

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"

# Words of a refusal that is about money, not about speed: the key stays refused until someone pays.
CREDIT_WORDS = re.compile(
    r"credit balance is too low|spend(?:ing)? limit|usage limits?|purchase credits", re.IGNORECASE
)


def classify_anthropic_error(status: int, err_type: str | None, message: str | None) -> Health:
    """The documented table plus the observed out-of-credit 400; 5xx and 529 never blame the key."""
    money = bool(message and CREDIT_WORDS.search(message))
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


class AnthropicAdapter(ProviderAdapter):
    name = "anthropic"

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._ids: dict[tuple[str, str], str] = {}

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        base = (key.base_url or DEFAULT_BASE_URL).rstrip("/")
        answer = await self.http_probe(
            key,
            f"{base}/v1/models",
            started=started,
            params={"limit": 1},
            headers=lambda secret: {"x-api-key": secret, "anthropic-version": API_VERSION},
            refusal=_refusal,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        return self.listed(key, started, response, body, ratelimit=anthropic_ratelimit(response.headers))

    # -- admin API --------------------------------------------------------------------------------
    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        return _metadata(await self._find(key))

    async def disable(self, key: ManagedKey) -> None:
        await self._set_status(key, "inactive")

    async def enable(self, key: ManagedKey) -> None:
        await self._set_status(key, "active")

    async def revoke(self, key: ManagedKey) -> None:
        """Archive the key: Anthropic offers no way back, hence the account's explicit opt-in."""
        mgmt.require_destructive(self.account_for(key), key, "archiving an Anthropic key")
        await self._set_status(key, "archived")

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        record = await self._find(key)
        if record.get("status") == status:
            return
        if record.get("status") in ("archived", "expired") and status != "archived":
            raise ProviderActionError(
                f"key {key.name}: the Anthropic key is {record.get('status')} and cannot be made {status}",
                permanent=True,
            )
        await self._admin(
            key,
            "POST",
            f"/v1/organizations/api_keys/{record['id']}",
            what=f"set Anthropic key {key.name} {status}",
            json={"status": status},
        )

    async def _find(self, key: ManagedKey) -> dict[str, Any]:
        return await mgmt.find_record(
            key,
            self._ids,
            provider="Anthropic",
            id_field="id",
            hint_field="partial_key_hint",
            read=lambda key_id: self._read(key, key_id),
            list_all=lambda: self._list(key),
        )

    async def _read(self, key: ManagedKey, key_id: str) -> dict[str, Any]:
        record = await self._admin(
            key, "GET", f"/v1/organizations/api_keys/{key_id}", what=f"read Anthropic key {key.name}"
        )
        if not isinstance(record, dict) or not record.get("id"):
            raise ProviderActionError(f"read Anthropic key {key.name}: the answer is not a key object")
        return record

    async def _list(self, key: ManagedKey) -> list[Any]:
        records: list[Any] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(1000):
            page = await self._admin(
                key, "GET", "/v1/organizations/api_keys", what="list Anthropic keys", params=params
            )
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise ProviderActionError("list Anthropic keys: the answer is not the documented list shape")
            records += data
            if not page.get("has_more") or not page.get("last_id"):
                break
            params = {"limit": 1000, "after_id": page["last_id"]}
        return records

    async def _admin(self, key: ManagedKey, method: str, path: str, *, what: str, **kw: Any) -> Any:
        return await mgmt.account_call(
            self,
            key,
            method,
            path,
            what=what,
            default_base_url=DEFAULT_BASE_URL,
            headers=lambda secret: {"x-api-key": secret, "anthropic-version": API_VERSION},
            **kw,
        )


def _metadata(record: dict[str, Any]) -> KeyMetadata:
    details = {k: record.get(k) for k in ("workspace_id", "partial_key_hint") if record.get(k) is not None}
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


def _refusal(response: httpx2.Response, body: Any) -> Refusal:
    err_type, _, message = error_fields(body)
    return Refusal(
        classify_anthropic_error(response.status_code, err_type, message),
        code=err_type,
        message=message,
        ratelimit=anthropic_ratelimit(response.headers),
        retry_after_seconds=retry_after_header(response.headers),
    )
