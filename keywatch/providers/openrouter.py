"""OpenRouter: `GET /key` is a zero-token probe that also reports the key's spend and limit in USD;
a management key (the account's admin_secret) finds, disables, enables, creates and deletes keys.
"""

from __future__ import annotations

import time
from typing import Any

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult, Secret
from keywatch.providers import mgmt
from keywatch.providers.base import (
    KeyMetadata,
    ProviderActionError,
    ProviderAdapter,
)
from keywatch.providers.errors import Refusal, classify_status, error_fields, openai_ratelimit, retry_after

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
FIGURES = ("usage", "usage_daily", "usage_weekly", "usage_monthly", "limit", "limit_remaining")


class OpenRouterAdapter(ProviderAdapter):
    name = "openrouter"

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._hashes: dict[tuple[str, str], str] = {}

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        base = (key.base_url or DEFAULT_BASE_URL).rstrip("/")
        answer = await self.http_probe(
            key,
            f"{base}/key",
            started=started,
            headers=lambda secret: {"Authorization": f"Bearer {secret}"},
            refusal=_refusal,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        ratelimit = openai_ratelimit(response.headers)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or "limit_remaining" not in data or "usage" not in data:
            return self.bad_response(key, started, response.status_code, "the key info is not the documented shape")
        details: dict[str, Any] = {f: mgmt.amount_str(data.get(f)) for f in FIGURES}
        details["currency"] = "USD"
        for f in ("limit_reset", "is_free_tier", "label"):
            if data.get(f) is not None:
                details[f] = data[f]
        remaining = mgmt.decimal_or_none(data.get("limit_remaining"))
        if data.get("limit_remaining") is not None and remaining is None:
            return self.bad_response(key, started, response.status_code, "limit_remaining is not a number")
        if remaining is not None and remaining <= 0:
            return self.result(
                key,
                Health.QUOTA_EXHAUSTED,
                started,
                http_status=response.status_code,
                error_code="limit_reached",
                ratelimit=ratelimit,
                error_message=f"the key's limit of {details['limit']} USD is used up",
                **details,
            )
        return self.result(
            key, Health.HEALTHY, started, http_status=response.status_code, ratelimit=ratelimit, **details
        )

    # -- management key ---------------------------------------------------------------------------
    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        return _metadata(await self._find(key))

    async def disable(self, key: ManagedKey) -> None:
        await self._set_disabled(key, True)

    async def enable(self, key: ManagedKey) -> None:
        await self._set_disabled(key, False)

    async def revoke(self, key: ManagedKey) -> None:
        """Delete the key: there is no undelete, hence the account's explicit opt-in."""
        mgmt.require_destructive(self.account_for(key), key, "deleting an OpenRouter key")
        record = await self._find(key)
        await self._manage(key, "DELETE", f"/keys/{record['hash']}", what=f"delete OpenRouter key {key.name}")
        self._hashes.pop((key.name, key.fingerprint), None)

    async def create(self, key: ManagedKey, *, name: str) -> tuple[KeyMetadata, Secret]:
        """A new key on `key`'s account with the same limit, for rotation; the secret is returned once."""
        current = await self._find(key)
        payload: dict[str, Any] = {"name": name}
        if current.get("limit") is not None:
            payload["limit"] = current["limit"]
        if current.get("limit_reset"):
            payload["limit_reset"] = current["limit_reset"]
        body = await self._manage(key, "POST", "/keys", what=f"create OpenRouter key {name}", json=payload)
        data = body.get("data") if isinstance(body, dict) else None
        value = body.get("key") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(value, str) or not value:
            raise ProviderActionError(f"create OpenRouter key {name}: the answer carries no key")
        return _metadata(data), Secret(value)

    async def _set_disabled(self, key: ManagedKey, disabled: bool) -> None:
        record = await self._find(key)
        if bool(record.get("disabled")) is disabled:
            return
        await self._manage(
            key,
            "PATCH",
            f"/keys/{record['hash']}",
            what=f"{'disable' if disabled else 'enable'} OpenRouter key {key.name}",
            json={"disabled": disabled},
        )

    async def _find(self, key: ManagedKey) -> dict[str, Any]:
        return await mgmt.find_record(
            key,
            self._hashes,
            provider="OpenRouter",
            id_field="hash",
            hint_field="label",
            read=lambda key_hash: self._read(key, key_hash),
            list_all=lambda: self._list(key),
        )

    async def _read(self, key: ManagedKey, key_hash: str) -> dict[str, Any]:
        body = await self._manage(key, "GET", f"/keys/{key_hash}", what=f"read OpenRouter key {key.name}")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ProviderActionError(f"read OpenRouter key {key.name}: the answer is not a key object")
        data.setdefault("hash", key_hash)
        return data

    async def _list(self, key: ManagedKey) -> list[Any]:
        records: list[Any] = []
        offset = 0
        for _ in range(1000):
            body = await self._manage(
                key,
                "GET",
                "/keys",
                what="list OpenRouter keys",
                params={"include_disabled": "true", "offset": offset},
            )
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise ProviderActionError("list OpenRouter keys: the answer is not the documented list shape")
            records += data
            if not data:
                break
            offset += len(data)
        return records

    async def _manage(self, key: ManagedKey, method: str, path: str, *, what: str, **kw: Any) -> Any:
        return await mgmt.account_call(
            self,
            key,
            method,
            path,
            what=what,
            default_base_url=DEFAULT_BASE_URL,
            headers=lambda secret: {"Authorization": f"Bearer {secret}"},
            **kw,
        )


def _refusal(response: httpx2.Response, body: Any) -> Refusal:
    _, code, message = error_fields(body)
    return Refusal(
        classify_status(response.status_code),
        code=code,
        message=message,
        ratelimit=openai_ratelimit(response.headers),
        retry_after_seconds=retry_after(response.headers),
    )


def _metadata(record: dict[str, Any]) -> KeyMetadata:
    details: dict[str, Any] = {f: mgmt.amount_str(record.get(f)) for f in FIGURES if f in record}
    for f in ("label", "limit_reset"):
        if record.get(f) is not None:
            details[f] = record[f]
    if record.get("updated_at"):
        details["updated_at"] = record["updated_at"]
    return KeyMetadata(
        provider_key_id=record.get("hash"),
        name=record.get("name"),
        status="disabled" if record.get("disabled") else "active",
        created_at=mgmt.parse_time(record.get("created_at")),
        details=details,
    )
