"""The one interface every provider implements, and the inventory types adapters receive.

An adapter gets its HTTP client (and, for management calls, its account) from outside: tests and the
simulator change the base URL or the transport, nothing is monkeypatched.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult, RateLimit, Secret
from keywatch.providers import registry
from keywatch.providers.errors import Refusal, classify_transport_error, json_or_none
from keywatch.providers.lean import lean_of
from keywatch.providers.registry import Capability, RotationMode
from keywatch.redact import redact_text


class NotSupported(Exception):
    """The provider offers no way to do this; the capability matrix says so."""


class ProviderActionError(Exception):
    """A management call failed. `permanent` is False when retrying later may succeed."""

    def __init__(self, message: str, *, permanent: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status


@dataclass(frozen=True)
class KeyMetadata:
    """What the provider's management API says about a key."""

    provider_key_id: str | None = None
    name: str | None = None
    status: str | None = None  # provider's own word: active, inactive, disabled ...
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    compromised: bool = False
    compromise_reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Credential:
    """A credential at the provider, as its management API lists it; never carries a secret.

    `id` is the provider's own: OpenAI `key_...`, OpenRouter hash, IAM AccessKeyId, Bedrock
    ServiceSpecificCredentialId, Azure `key1`/`key2`, Anthropic `apikey_...`."""

    id: str
    name: str | None
    status: str  # "active" | "inactive" | "archived" ... (the provider's word, lower case)
    created_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class NewCredential:
    """A credential just created (or regenerated), with its secret: the only moment a provider shows it."""

    id: str
    secret: Secret
    fields: dict[str, str] = field(default_factory=dict)  # non-secret companions, e.g. {"access_key_id": ...}

    def __repr__(self) -> str:
        return f"NewCredential({self.id!r}, {self.secret.masked}, {self.fields!r})"


@dataclass(frozen=True)
class RotationSupport:
    """How a key rotates: `create` (a second credential by API), `slots` (Azure's two keys, regenerate the
    one not in use), `assisted` (a person makes the new key; keywatch verifies, promotes, retires), `none`."""

    mode: RotationMode
    reason: str  # one line for the operator: why this mode, what keywatch will do


def utcnow() -> datetime:
    return datetime.now(UTC)


class ProviderAdapter:
    """Base class: subclasses set `name` and implement the capabilities their provider's `ProviderInfo`
    declares (registry.py), which every adapter class also carries as `capabilities`, `notes` and
    `least_privilege`."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.PROBE})
    notes: ClassVar[dict[str, str]] = {}
    least_privilege: ClassVar[str] = ""
    rotation: ClassVar[RotationMode] = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        info = registry.PROVIDERS.get(cls.__dict__.get("name", ""))
        if info is not None:
            cls.capabilities, cls.notes, cls.least_privilege = info.capabilities, info.notes, info.least_privilege
            cls.rotation = info.rotation

    def __init__(
        self,
        http: httpx2.AsyncClient,
        accounts: dict[str, Account] | None = None,
        *,
        timeout: float = 10.0,
        completion_model: str = "gpt-4o-mini",
    ) -> None:
        self.http = http
        self.accounts = accounts or {}
        self.timeout = timeout
        self.completion_model = completion_model

    # -- key-level --------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        raise NotImplementedError

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        raise NotSupported(f"{self.name} has no API to read key metadata")

    async def disable(self, key: ManagedKey) -> None:
        raise NotSupported(f"{self.name} has no API to deactivate a key")

    async def enable(self, key: ManagedKey) -> None:
        raise NotSupported(f"{self.name} has no API to re-activate a key")

    async def aclose(self) -> None:
        return None

    # -- rotation: the credential lifecycle (NotSupported where the provider has no such call) -----
    async def rotation_support(self, key: ManagedKey) -> RotationSupport:
        """The provider's declared mode; adapters whose mode depends on the key (OpenAI owners) override."""
        info = registry.PROVIDERS.get(getattr(self, "name", ""))
        if info is None:
            return RotationSupport("none", f"{getattr(self, 'name', type(self).__name__)} declares no rotation")
        return RotationSupport(info.rotation, " ".join(info.rotation_note.split()))

    async def current_credential(self, key: ManagedKey) -> Credential:
        """The provider's credential that `key` is."""
        raise NotSupported(f"{self.name} has no API to read a key's credential")

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        """The credentials in the same scope as `key` (service account, IAM user, account, slots, workspace)."""
        raise NotSupported(f"{self.name} has no API to list credentials")

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        """A new credential beside `key`'s; slots: regenerates the slot NOT in use and returns it."""
        raise NotSupported(f"{self.name} has no API to create a credential")

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Stop a credential, reversibly."""
        raise NotSupported(f"{self.name} has no API to deactivate a credential (reversibly)")

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Destroy a credential (Azure: regenerate that slot)."""
        raise NotSupported(f"{self.name} has no API to delete a credential")

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Undo deactivate_credential (rollback)."""
        raise NotSupported(f"{self.name} has no API to reactivate a credential")

    def with_credential(self, key: ManagedKey, new: NewCredential) -> ManagedKey:
        """The ManagedKey of `new`: same name and settings, the new secret, the new id (and its companion
        fields) as options. Adapters whose keys name their credential otherwise override."""
        options = {**key.options, **new.fields, "provider_key_id": new.id}
        return dataclasses.replace(key, secret=new.secret, options=options)

    # -- helpers ----------------------------------------------------------------------------------
    def account_for(self, key: ManagedKey) -> Account:
        if key.account and key.account in self.accounts:
            return self.accounts[key.account]
        matches = [a for a in self.accounts.values() if a.provider == self.name]
        if len(matches) == 1 and not key.account:
            return matches[0]
        raise ProviderActionError(
            f"key {key.name}: no {self.name} account with management credentials is configured "
            "(add [[accounts]] and set `account` on the key)",
            permanent=True,
        )

    def result(
        self,
        key: ManagedKey,
        health: Health,
        started: float,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        ratelimit: RateLimit | None = None,
        retry_after_seconds: float | None = None,
        **details: Any,
    ) -> ProbeResult:
        if error_message:
            secrets = [key.secret.reveal()] if key.secret else []
            secrets += [s.reveal() for s in key.extra_secrets.values()]
            error_message = redact_text(error_message[:500], secrets)
        return ProbeResult(
            key=key.name,
            provider=key.provider,
            health=health,
            checked_at=utcnow(),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            http_status=http_status,
            error_code=error_code,
            error_message=error_message or None,
            ratelimit=ratelimit,
            retry_after_seconds=retry_after_seconds,
            details=details,
        )

    def bad_response(self, key: ManagedKey, started: float, http_status: int | None, message: str) -> ProbeResult:
        """An answer that is not what the provider documents: the provider's (or a proxy's) fault, never the key's."""
        return self.result(
            key,
            Health.PROVIDER_ERROR,
            started,
            http_status=http_status,
            error_code="bad_response",
            error_message=message,
        )

    def redirected(self, key: ManagedKey, started: float, http_status: int) -> ProbeResult:
        """A 3xx: never followed (the key would go wherever Location says), never the key's fault."""
        return self.result(
            key,
            Health.PROVIDER_ERROR,
            started,
            http_status=http_status,
            error_code="redirect",
            error_message=f"the provider answered {http_status}, a redirect; redirects are not followed",
        )

    def listed(
        self,
        key: ManagedKey,
        started: float,
        response: httpx2.Response,
        body: Any,
        *,
        field: str = "data",
        ratelimit: RateLimit | None = None,
        **details: Any,
    ) -> ProbeResult:
        """A probe whose proof is a model list: healthy when `body[field]` is a list, else bad_response."""
        if not isinstance(body, dict) or not isinstance(body.get(field), list):
            return self.bad_response(key, started, response.status_code, "the model list is not the documented shape")
        return self.result(key, Health.HEALTHY, started, http_status=response.status_code, ratelimit=ratelimit,
                           **details)

    async def http_probe(
        self,
        key: ManagedKey,
        url: str,
        *,
        started: float,
        headers: Callable[[str], dict[str, str]],
        refusal: Callable[[httpx2.Response, Any], Refusal],
        params: dict[str, Any] | None = None,
        decode: Callable[[httpx2.Response], Any] = json_or_none,
        transport_detail: bool = True,
    ) -> ProbeResult | tuple[httpx2.Response, Any]:
        """GET `url` with the key's secret in `headers(secret)`, settling what every HTTP probe settles alike.

        The GET takes the lean path (providers.lean) when the shared client offers one, else the client's
        own; `refusal` and `decode` read either answer the same way.

        The ProbeResult when the answer is already known: no secret to send, no answer at all (the network
        or the provider, never the key), or an error answer, which `refusal` reads with the provider's own
        table. Otherwise the 2xx response and its body as `decode` reads it, for the adapter to judge.
        `transport_detail` adds the exception's own words to an unreachable result.
        """
        if key.secret is None:
            return self.result(
                key,
                Health.PROVIDER_ERROR,
                started,
                error_code="no_secret",
                error_message="the key has no secret to probe with",
            )
        lean = lean_of(self.http)
        try:
            if lean is not None:  # one GET on the shared session, read within the same caps
                response: Any = await lean.get(url, params=params, headers=headers(key.secret.reveal()),
                                               timeout=self.timeout)
            else:
                response = await self.http.get(
                    url, params=params, headers=headers(key.secret.reveal()), timeout=self.timeout
                )
        except httpx2.HTTPError as exc:
            health, code = classify_transport_error(exc)
            if code == "timeout":
                message = f"no answer within {self.timeout:g}s"
            else:
                message = f"{type(exc).__name__}: {exc}" if transport_detail else type(exc).__name__
            return self.result(key, health, started, error_code=code, error_message=message)
        if response.is_redirect:
            return self.redirected(key, started, response.status_code)
        body = decode(response)
        if response.status_code >= 300:
            refused = refusal(response, body)
            return self.result(
                key,
                refused.health,
                started,
                http_status=response.status_code,
                error_code=refused.code or f"http_{response.status_code}",
                error_message=refused.message or response.reason_phrase,
                ratelimit=refused.ratelimit,
                retry_after_seconds=refused.retry_after_seconds,
            )
        return response, body
