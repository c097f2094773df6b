"""OpenAI key management through the Admin API (an `sk-admin-...` key on the account), via the SDK's
`client.admin` resources.

OpenAI keys live in projects; the Admin API lists them with a redacted value, a name, created_at and
last_used_at. It has no reversible deactivate: the only action on a key is DELETE, which is destructive,
so it needs the account's explicit opt-in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx2

from keywatch.domain import Account, ManagedKey, Secret
from keywatch.providers import mgmt
from keywatch.providers.base import (
    Credential,
    KeyMetadata,
    NewCredential,
    NotSupported,
    ProviderActionError,
    RotationSupport,
)
from keywatch.redact import REGISTRY, redact_text

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "https://api.openai.com/v1"
PAGE = 100

NO_DEACTIVATE = (
    "OpenAI has no reversible deactivate for API keys: the Admin API can only delete a key (revoke, "
    "destructive, needs allow_destructive on the account); narrowing a key's scopes is not a disable"
)


class OpenAIAdmin:
    """Admin API operations for the keys of one OpenAIAdapter; ids found once are remembered."""

    def __init__(self, http: httpx2.AsyncClient, timeout: float) -> None:
        self.http = http
        self.timeout = timeout
        self._clients: dict[tuple[str, str, str], openai.AsyncOpenAI] = {}
        # (key name, fingerprint) -> (project id, key id)
        self._found: dict[tuple[str, str], tuple[str, str]] = {}

    def client(self, account: Account, key: ManagedKey) -> openai.AsyncOpenAI:
        secret = mgmt.admin_secret(account, "the OpenAI Admin API")
        base_url = account.base_url or key.base_url or DEFAULT_BASE_URL
        fingerprint = account.admin_secret.fingerprint if account.admin_secret else ""
        cache_key = (account.name, fingerprint, base_url)
        client = self._clients.get(cache_key)
        if client is None:
            import openai  # the SDK is loaded by the first call that needs it (clients.make_http_client)

            client = openai.AsyncOpenAI(
                api_key="unused-admin-only",  # never sent; keeps OPENAI_API_KEY from the environment out
                admin_api_key=secret,
                base_url=base_url,
                http_client=self.http,
                max_retries=0,
                timeout=self.timeout,
            )
            self._clients[cache_key] = client
        return client

    async def metadata(self, account: Account, key: ManagedKey) -> KeyMetadata:
        project_id, item = await self._find(account, key)
        return _metadata(project_id, item)

    async def disable(self, account: Account, key: ManagedKey) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def enable(self, account: Account, key: ManagedKey) -> None:
        raise NotSupported(NO_DEACTIVATE)

    async def revoke(self, account: Account, key: ManagedKey) -> None:
        """Delete the key. A key owned by a service account cannot be deleted alone: OpenAI answers 400."""
        mgmt.require_destructive(account, key, "deleting an OpenAI key")
        project_id, item = await self._find(account, key)
        client = self.client(account, key)
        await self._guard(
            account, key, f"delete OpenAI key {key.name}",
            client.admin.organization.projects.api_keys.delete(item.id, project_id=project_id),
        )
        self._found.pop((key.name, key.fingerprint), None)

    # -- rotation: service-account keys are created beside the old one, which is then deleted by id ----
    async def rotation_support(self, account: Account, key: ManagedKey) -> RotationSupport:
        _, item = await self._find(account, key)
        owner = _owner(item)
        if owner[0] == "service_account":
            return RotationSupport(
                "create",
                f"owned by service account {owner[1]}: keywatch creates a second key for it through the Admin API "
                "and deletes the old key by id (the service account stays)",
            )
        return RotationSupport(
            "assisted",
            "a user-owned project key: OpenAI cannot create one through the API; create the new key in the "
            "dashboard and put it in the key's secret source, keywatch verifies and promotes it and deletes the "
            "old key through the Admin API",
        )

    async def current_credential(self, account: Account, key: ManagedKey) -> Credential:
        _, item = await self._find(account, key)
        return _credential(item)

    async def list_credentials(self, account: Account, key: ManagedKey) -> list[Credential]:
        """The project keys of the same owner (service account or user) as `key`."""
        project_id, item = await self._find(account, key)
        owner = _owner(item)
        client = self.client(account, key)
        listed = await self._guard(
            account, key, f"list OpenAI keys of project {project_id}",
            _collect(client.admin.organization.projects.api_keys.list(project_id, limit=PAGE)),
        )
        return [_credential(k) for k in listed if _owner(k) == owner]

    async def create_credential(self, account: Account, key: ManagedKey, *, name: str) -> NewCredential:
        project_id, item = await self._find(account, key)
        kind, owner_id = _owner(item)
        if kind != "service_account" or not owner_id:
            raise NotSupported(
                f"key {key.name} is owned by a user: OpenAI creates user-owned keys only in the dashboard "
                "(assisted rotation)"
            )
        client = self.client(account, key)
        created = await self._guard(
            account, key, f"create a key for OpenAI service account {owner_id}",
            client.admin.organization.projects.service_accounts.api_keys.create(
                owner_id, project_id=project_id, name=name
            ),
        )
        value = getattr(created, "value", None)
        key_id = getattr(created, "id", None)
        if not isinstance(value, str) or not value or not isinstance(key_id, str) or not key_id:
            raise ProviderActionError(f"create a key for OpenAI service account {owner_id}: the answer carries no key")
        REGISTRY.add([value])
        return NewCredential(key_id, Secret(value), {"project": project_id})

    async def delete_credential(self, account: Account, key: ManagedKey, credential_id: str) -> None:
        project_id, _ = await self._find(account, key)
        client = self.client(account, key)
        await self._guard(
            account, key, f"delete OpenAI key {credential_id} (beside {key.name})",
            client.admin.organization.projects.api_keys.delete(credential_id, project_id=project_id),
        )

    async def _find(self, account: Account, key: ManagedKey) -> tuple[str, Any]:
        """(project id, the key's Admin API item): by provider_key_id, else redacted value, else name."""
        client = self.client(account, key)
        api_keys = client.admin.organization.projects.api_keys
        wanted_id = key.options.get("provider_key_id")
        known = self._found.get((key.name, key.fingerprint))
        project_hint = key.options.get("project")
        if known or (wanted_id and project_hint):
            project_id, key_id = known or (project_hint, wanted_id)
            item = await self._guard(account, key, f"read OpenAI key {key.name}",
                                     api_keys.retrieve(key_id, project_id=project_id))
            return project_id, item

        async def collect() -> list[tuple[str, Any]]:
            projects = [project_hint] if project_hint else [
                p.id async for p in client.admin.organization.projects.list(limit=PAGE)
            ]
            found = []
            for project_id in projects:
                found += [(project_id, k) async for k in api_keys.list(project_id, limit=PAGE)]
            return found

        candidates = await self._guard(account, key, "list OpenAI projects and keys", collect())
        if wanted_id:
            matches = [c for c in candidates if c[1].id == wanted_id]
            if not matches:
                raise ProviderActionError(
                    f"key {key.name}: no OpenAI key with id {wanted_id} in the organization's projects",
                    permanent=True,
                )
            chosen = matches[0]
        else:
            chosen = mgmt.pick_one(
                candidates, key,
                hint_of=lambda c: getattr(c[1], "redacted_value", None),
                name_of=lambda c: getattr(c[1], "name", None),
                provider="OpenAI",
            )
        self._found[(key.name, key.fingerprint)] = (chosen[0], chosen[1].id)
        return chosen

    async def _guard(self, account: Account, key: ManagedKey, what: str, awaitable: Any) -> Any:
        """SDK errors as ProviderActionError: permanent when a person must change something, masked always."""
        import openai

        secrets = [s.reveal() for s in (account.admin_secret, key.secret) if s is not None]
        try:
            return await awaitable
        except openai.APIStatusError as exc:
            body = exc.body
            message = body.get("message") if isinstance(body, dict) else None
            raise mgmt.status_error(what, exc.status_code, message or exc.message, secrets) from None
        except openai.APITimeoutError:
            raise ProviderActionError(f"{what}: no answer within {self.timeout:g}s") from None
        except openai.APIConnectionError as exc:
            raise ProviderActionError(
                redact_text(f"{what}: cannot reach the provider ({type(exc.__cause__ or exc).__name__})",
                            secrets)
            ) from None
        except openai.APIResponseValidationError:
            raise ProviderActionError(f"{what}: the answer is not the documented shape") from None

    async def aclose(self) -> None:
        self._clients.clear()


async def _collect(pages: Any) -> list[Any]:
    return [k async for k in pages]


def _owner(item: Any) -> tuple[str | None, str | None]:
    """(owner type, owner id) of an Admin API key record: the scope its siblings share."""
    owner = getattr(item, "owner", None)
    kind = getattr(owner, "type", None)
    if kind == "service_account":
        return kind, getattr(getattr(owner, "service_account", None), "id", None)
    if kind == "user":
        return kind, getattr(getattr(owner, "user", None), "id", None)
    return kind, None


def _credential(item: Any) -> Credential:
    return Credential(
        id=item.id,
        name=getattr(item, "name", None),
        status="active",  # the Admin API lists only live keys
        created_at=mgmt.parse_time(getattr(item, "created_at", None)),
        last_used_at=mgmt.parse_time(getattr(item, "last_used_at", None)),
    )


def _metadata(project_id: str, item: Any) -> KeyMetadata:
    owner = getattr(item, "owner", None)
    details: dict[str, Any] = {"project_id": project_id}
    for field in ("redacted_value", "owner_project_access"):
        value = getattr(item, field, None)
        if value is not None:
            details[field] = value
    if owner is not None and getattr(owner, "type", None):
        details["owner_type"] = owner.type
    expires = mgmt.parse_time(getattr(item, "expires_at", None))
    if expires is not None:
        details["expires_at"] = expires.isoformat()
    return KeyMetadata(
        provider_key_id=item.id,
        name=getattr(item, "name", None),
        status="active",  # the Admin API lists only live keys; a deleted key is gone, not "inactive"
        created_at=mgmt.parse_time(getattr(item, "created_at", None)),
        last_used_at=mgmt.parse_time(getattr(item, "last_used_at", None)),
        details=details,
    )
