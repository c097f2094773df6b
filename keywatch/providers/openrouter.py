"""OpenRouter: `GET /key` is a zero-token probe that also reports the key's spend and limit in USD;
a management key (the account's admin_secret) finds, disables, enables, creates and deletes keys.
"""

from __future__ import annotations

import time
from typing import Any

import httpx2

from keywatch.domain import Health, ManagedKey, ProbeResult, Secret
from keywatch.providers import mgmt
from keywatch.providers.base import Credential, KeyMetadata, NewCredential, ProviderActionError
from keywatch.providers.errors import Refusal, classify_status, error_fields, openai_ratelimit, retry_after
from keywatch.redact import REGISTRY

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
FIGURES = ("usage", "usage_daily", "usage_weekly", "usage_monthly", "limit", "limit_remaining")


def _headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# `disabled` is a flag; keywatch shows it as the status disabled or active.
STATUSES = mgmt.status_flag("disabled", method="PATCH", on="disabled", off="active")


def _credential(record: dict[str, Any]) -> Credential:
    return Credential(
        id=str(record.get("hash")),
        name=record.get("name"),
        status=STATUSES.of(record) or "active",
        created_at=mgmt.parse_time(record.get("created_at")),
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
        status=STATUSES.of(record),
        created_at=mgmt.parse_time(record.get("created_at")),
        details=details,
    )


# Management-key records, by hash: `PATCH /keys/{hash}` with `disabled` (reversible), `DELETE` for good;
# a read answer holds the record in `data`.
ADMIN_API = mgmt.AdminApi(
    headers=_headers,
    metadata=_metadata,
    records=mgmt.Records("/keys", id_field="hash", hint_field="label", read_field="data", read_fills_id=True),
    pages=mgmt.offset_pages(records_field="data", offset_param="offset", params={"include_disabled": "true"}),
    statuses=STATUSES,
)


class OpenRouterAdapter(mgmt.AdminApiAdapter):
    """Probed on the key's own info (spend and limit); managed, and created, with a management key."""

    name = "openrouter"

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        base = (key.base_url or DEFAULT_BASE_URL).rstrip("/")
        answer = await self.http_probe(
            key,
            f"{base}/key",
            started=started,
            headers=_headers,
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

    # -- management key: metadata, disable and enable as AdminApiAdapter does them -------------------
    admin_api = ADMIN_API

    async def revoke(self, key: ManagedKey) -> None:
        """Delete the key: there is no undelete, hence the account's explicit opt-in."""
        mgmt.require_destructive(self.account_for(key), key, "deleting an OpenRouter key")
        await self.delete_record(key)

    async def create(self, key: ManagedKey, *, name: str) -> tuple[KeyMetadata, Secret]:
        """A new key on `key`'s account with the same limit, for rotation; the secret is returned once."""
        current = await self.find_record(key)
        payload: dict[str, Any] = {"name": name}
        if current.get("limit") is not None:
            payload["limit"] = current["limit"]
        if current.get("limit_reset"):
            payload["limit_reset"] = current["limit_reset"]
        what = f"create OpenRouter key {name}"
        body = await self.admin_call(key, "POST", ADMIN_API.records.path, what=what, json=payload)
        data = body.get("data") if isinstance(body, dict) else None
        value = body.get("key") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(value, str) or not value:
            raise ProviderActionError(f"create OpenRouter key {name}: the answer carries no key")
        REGISTRY.add([value])
        return _metadata(data), Secret(value)

    # -- rotation: a new key with the old one's name and limit; the old one disabled, then deleted ------
    async def current_credential(self, key: ManagedKey) -> Credential:
        return _credential(await self.find_record(key))

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        """Every key of the management key's account, disabled ones too (OpenRouter has no narrower scope)."""
        records = await self._list_records(key)
        return [_credential(r) for r in records if isinstance(r, dict) and r.get("hash")]

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        meta, secret = await self.create(key, name=name)
        if not meta.provider_key_id:
            raise ProviderActionError(f"create OpenRouter key {name}: the answer carries no hash")
        return NewCredential(meta.provider_key_id, secret, {})

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._patch(key, credential_id, disabled=True)

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._patch(key, credential_id, disabled=False)

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """DELETE by hash; the caller decides whether it may (rollback of a new key, or after grace)."""
        await self.admin_call(
            key, "DELETE", f"{ADMIN_API.records.path}/{credential_id}",
            what=f"delete OpenRouter key {credential_id} (beside {key.name})",
        )

    async def _patch(self, key: ManagedKey, credential_id: str, *, disabled: bool) -> None:
        verb = "disable" if disabled else "enable"
        await self.admin_call(
            key, "PATCH", f"{ADMIN_API.records.path}/{credential_id}",
            what=f"{verb} OpenRouter key {credential_id} (beside {key.name})", json={"disabled": disabled},
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
