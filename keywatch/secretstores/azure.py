"""Azure Key Vault: `azure-kv:<vault-url>/<name>[#json-field]`, through azure-keyvault-secrets.

Key Vault keeps every version of a secret and applications read the latest one. A pending value must not be
the latest (applications would read it before it is proven), and it cannot be a disabled latest version
either (Key Vault refuses to read a secret whose latest version is disabled). So:

- pending: the latest version of the companion secret `<name>--keywatch-pending`, enabled and tagged
  `keywatch-stage=pending`, `keywatch-token=<rotation token>`;
- promote: the pending value becomes a new version of `<name>` (the new latest), tagged with the token and
  `keywatch-previous=<the version it replaced>`; the companion version is then disabled (`promoted`);
- previous: the version the latest one names in `keywatch-previous` (every old version stays readable);
- discard: the companion version is disabled (`discarded`); `<name>` is not touched.

Each step checks the tags first, so repeating it after a crash does nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from keywatch.domain import Secret
from keywatch.secretstores.base import BadReference, Stage, StoreUnavailable, check_token, json_object, value_of
from keywatch.secretstores.config import AzureStoreSettings

PENDING_SUFFIX = "--keywatch-pending"
TOKEN_TAG, PREVIOUS_TAG, STAGE_TAG = "keywatch-token", "keywatch-previous", "keywatch-stage"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


def parse_azure_ref(ref: str) -> tuple[str, str, str | None]:
    body = ref.removeprefix("azure-kv:")
    body, sep, field = body.partition("#")
    vault_url, _, name = body.rstrip("/").rpartition("/")
    parsed = urlparse(vault_url)
    if parsed.scheme != "https" or not parsed.netloc or not name:
        raise BadReference(f"{ref}: expected azure-kv:https://<vault>.vault.azure.net/<secret name>[#json-field]")
    if not set(name) <= _NAME_CHARS or len(name) > 127 - len(PENDING_SUFFIX):
        raise BadReference(f"{ref}: a Key Vault secret name is 1-{127 - len(PENDING_SUFFIX)} letters, digits and -")
    if sep and not field:
        raise BadReference(f"{ref}: empty JSON field after #")
    return vault_url, name, field or None


def _reference_value(ref: str, what: str) -> str:
    """`client_secret` of [secret_stores.azure]: env:NAME or file:/path (this package sits below settings)."""
    scheme, _, arg = ref.partition(":")
    if scheme == "env" and arg in os.environ:
        return os.environ[arg].strip()
    if scheme == "file":
        try:
            return Path(arg).read_text().strip()
        except OSError:
            pass
    raise StoreUnavailable(what, "secret_stores.azure.client_secret cannot be resolved (env:NAME or file:/path)",
                           permanent=True)


class KeyVaultDestination:
    def __init__(self, ref: str, vault_url: str, name: str, field: str | None, settings: AzureStoreSettings,
                 credential: Any = None) -> None:
        self.ref = ref
        self.vault_url = vault_url
        self.name = name
        self.pending_name = name + PENDING_SUFFIX
        self.field = field
        self.settings = settings
        self._credential = credential  # an async TokenCredential; default: built from settings per call

    # ---- plumbing
    def _make_credential(self) -> Any:
        if self._credential is not None:
            return self._credential
        s = self.settings
        kw: dict[str, Any] = {"authority": s.authority} if s.authority else {}
        if s.credential == "client_secret":
            from azure.identity.aio import ClientSecretCredential

            return ClientSecretCredential(s.tenant_id, s.client_id, _reference_value(s.client_secret or "", self.ref),
                                          **kw)
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential(**kw)

    async def _with_client(self, fn: Any) -> Any:
        try:
            from azure.core.exceptions import (
                ClientAuthenticationError,
                HttpResponseError,
                ResourceNotFoundError,
                ServiceRequestError,
                ServiceResponseError,
            )
            from azure.keyvault.secrets.aio import SecretClient
        except ImportError:
            raise StoreUnavailable(self.ref, "azure-keyvault-secrets is not installed (pip install 'keywatch[azure]')",
                                   permanent=True) from None
        credential = self._make_credential()
        kw: dict[str, Any] = {"verify_challenge_resource": self.settings.verify_challenge_resource,
                              "connection_timeout": self.settings.timeout, "read_timeout": self.settings.timeout,
                              "retry_total": 1}
        if self.settings.ca_bundle:
            kw["connection_verify"] = self.settings.ca_bundle
        try:
            async with SecretClient(self.vault_url, credential, **kw) as client:
                return await fn(client)
        except ResourceNotFoundError:
            raise _NotFound() from None
        except ClientAuthenticationError as exc:
            raise StoreUnavailable(self.ref, f"not authorised (HTTP {exc.status_code or '?'})",
                                   permanent=True) from None
        except HttpResponseError as exc:
            code = getattr(exc.error, "code", None) if exc.error else None
            inner = _inner_code(exc)
            if inner == "SecretDisabled":
                raise _Disabled() from None
            status = exc.status_code or 0
            raise StoreUnavailable(self.ref, f"HTTP {status} {code or ''}".strip(),
                                   permanent=status in (400, 401, 403, 409)) from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise StoreUnavailable(self.ref, f"vault unreachable ({type(exc).__name__})") from None
        except ValueError as exc:  # the challenge names another resource, a non-https URL
            raise StoreUnavailable(self.ref, f"refused by the SDK: {str(exc).split('.')[0]}", permanent=True) from None
        finally:
            if self._credential is None:
                await credential.close()

    async def _get(self, name: str, version: str | None = None) -> Any | None:
        """The KeyVaultSecret, or None when missing or disabled."""
        try:
            return await self._with_client(lambda c: c.get_secret(name, version))
        except (_NotFound, _Disabled):
            return None



    async def _pending(self) -> Any | None:
        """The companion's latest version when it is an offered pending value."""
        held = await self._get(self.pending_name)
        if held is None or (held.properties.tags or {}).get(STAGE_TAG) != "pending":
            return None
        return held

    async def _disable(self, held: Any, stage: str) -> None:
        tags = dict(held.properties.tags or {}) | {STAGE_TAG: stage}
        version = held.properties.version
        with contextlib.suppress(_NotFound):
            await self._with_client(lambda c: c.update_secret_properties(
                self.pending_name, version, enabled=False, tags=tags))

    # ---- Destination
    async def read(self, stage: Stage = "current") -> Secret | None:
        if stage == "pending":
            held = await self._pending()
        elif stage == "current":
            held = await self._get(self.name)
        else:
            latest = await self._get(self.name)
            prev = (latest.properties.tags or {}).get(PREVIOUS_TAG) if latest is not None else None
            held = await self._get(self.name, prev) if prev else None
        return value_of(self.ref, self.field, held.value if held is not None else None)

    async def write_pending(self, secret: Secret, *, token: str, fields: Mapping[str, str] = {}) -> None:
        check_token(self.ref, token)
        latest = await self._get(self.name)
        if latest is not None and (latest.properties.tags or {}).get(TOKEN_TAG) == token:
            return  # already promoted
        pending = await self._pending()
        if pending is not None and (pending.properties.tags or {}).get(TOKEN_TAG) == token:
            if value_of(self.ref, self.field, pending.value) != secret:
                raise StoreUnavailable(self.ref, "this rotation token already holds a different value",
                                       permanent=True)
            return
        if self.field is None:
            value = secret.reveal()
        else:
            data = json_object(self.ref, self.field, latest.value) if latest is not None and latest.value else {}
            data.update(fields)
            data[self.field] = secret.reveal()
            value = json.dumps(data)
        tags = {STAGE_TAG: "pending", TOKEN_TAG: token, "keywatch-of": self.name}
        await self._with_client(lambda c: c.set_secret(self.pending_name, value, tags=tags))

    async def promote(self, *, token: str) -> None:
        check_token(self.ref, token)
        latest = await self._get(self.name)
        pending = await self._pending()
        mine = pending is not None and (pending.properties.tags or {}).get(TOKEN_TAG) == token
        if latest is not None and (latest.properties.tags or {}).get(TOKEN_TAG) == token:
            if mine:
                await self._disable(pending, "promoted")  # the crash came between the two steps
            return
        if not mine:
            raise StoreUnavailable(self.ref, "no pending value for this rotation token", permanent=True)
        tags = {TOKEN_TAG: token, STAGE_TAG: "current"}
        if latest is not None:
            tags[PREVIOUS_TAG] = latest.properties.version
        value = pending.value
        await self._with_client(lambda c: c.set_secret(self.name, value, tags=tags))
        await self._disable(pending, "promoted")

    async def discard_pending(self, *, token: str) -> None:
        check_token(self.ref, token)
        latest = await self._get(self.name)
        if latest is not None and (latest.properties.tags or {}).get(TOKEN_TAG) == token:
            raise StoreUnavailable(self.ref, "this rotation's value is already current; nothing to discard",
                                   permanent=True)
        pending = await self._pending()
        if pending is not None and (pending.properties.tags or {}).get(TOKEN_TAG) == token:
            await self._disable(pending, "discarded")

    async def stages(self) -> dict[str, str]:
        out: dict[str, str] = {}
        latest = await self._get(self.name)
        if latest is not None:
            out["current"] = latest.properties.version
            prev = (latest.properties.tags or {}).get(PREVIOUS_TAG)
            if prev:
                out["previous"] = prev
        pending = await self._pending()
        if pending is not None:
            out["pending"] = pending.properties.version
        return out


def _inner_code(exc: Any) -> str | None:
    try:
        body = exc.response.json()
        return ((body.get("error") or {}).get("innererror") or {}).get("code")
    except Exception:
        return None


class _NotFound(Exception):
    pass


class _Disabled(Exception):
    pass
