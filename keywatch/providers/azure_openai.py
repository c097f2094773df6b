"""Azure OpenAI: a zero-token data-plane probe, and account management through ARM.

Probe: `GET {endpoint}/openai/models?api-version=2024-10-21` with the `api-key` header. It proves the key
authenticates against this resource without spending tokens. A 429 normally means "slow down"; one that
asks to wait a day or more (retry-after >= 86400 s, from the header or from "retry after N seconds" in the
message) is a daily quota that is gone, so it is quota_exhausted. 401 is matched by status (the body's
code has been seen both as "401" and "Unauthorized").

Management (azure-mgmt-cognitiveservices + azure-identity, imported only when used): account lookup,
`list_keys`, `regenerate_key` (destructive: needs allow_destructive), quota usages. A key's secret may live
in the account itself (`secret = "azure:key1"`): it is fetched with list_keys when first probed, kept in
memory only, registered with the log redactor before any use, and fetched again once when Azure refuses
it (someone may have regenerated it). Azure has no way to deactivate one key: an account's two keys are
valid until regenerated, so disable/enable are NotSupported and revoke means regenerate.

The ARM client is synchronous; its calls run in a worker thread with no retries and short timeouts.
Over plain http (a local test server) azure-core refuses bearer tokens, so for an `http://` base_url the
adapter uses a small bearer policy of its own; production ARM is always https.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult, Secret
from keywatch.providers import mgmt
from keywatch.providers.base import (
    Credential,
    KeyMetadata,
    NewCredential,
    NotSupported,
    ProviderActionError,
    ProviderAdapter,
)
from keywatch.providers.errors import Refusal, error_fields, openai_ratelimit
from keywatch.providers.errors import retry_after as retry_after_header
from keywatch.redact import REGISTRY, redact_text

T = TypeVar("T")

DEFAULT_API_VERSION = "2024-10-21"
ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
QUOTA_RETRY_SECONDS = 86400.0
SLOTS = ("key1", "key2")

RETRY_IN_MESSAGE = re.compile(r"(?:retry after|try again in)\s+(\d+(?:\.\d+)?)\s*seconds?", re.IGNORECASE)
NO_DISABLE = (
    "Azure OpenAI has no per-key deactivation: an account's two keys stay valid until regenerated. "
    "Regenerating (revoke) stops a key for good and needs allow_destructive on the account"
)


def retry_seconds(headers: httpx2.Headers | dict[str, str], message: str | None) -> float | None:
    """The longest wait Azure asks for: `retry-after(-ms)` or the message ("retry after 86400 seconds")."""
    waits = []
    header = retry_after_header(headers)
    if header is not None:
        waits.append(header)
    if message:
        waits += [float(m) for m in RETRY_IN_MESSAGE.findall(message)]
    return max(waits) if waits else None


def classify_azure_error(status: int, retry_after_s: float | None) -> Health:
    if status >= 500:
        return Health.PROVIDER_ERROR
    if status == 401:
        return Health.INVALID
    if status == 403:
        return (
            Health.FORBIDDEN
        )  # network rules, private endpoints, disabled local auth: the key is refused here
    if status == 429:
        if retry_after_s is not None and retry_after_s >= QUOTA_RETRY_SECONDS:
            return Health.QUOTA_EXHAUSTED
        return Health.RATE_LIMITED
    return Health.PROVIDER_ERROR  # 404 wrong endpoint, 400 api-version ...: configuration, not the key


def slot_of(key: ManagedKey) -> str | None:
    """`azure:key1` -> `key1`; None for a secret held elsewhere."""
    scheme, _, arg = key.secret_ref.partition(":")
    if scheme == "azure":
        arg = arg.strip().lower()
        return arg if arg in SLOTS else None
    return None


def plain_http_bearer_policy(credential: Any, scope: str) -> Any:
    """A bearer policy for http:// test servers, where azure-core's own refuses to send tokens."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class PlainHttpBearerPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_request(self, request: Any) -> None:
            token = credential.get_token(scope)
            request.http_request.headers["Authorization"] = f"Bearer {token.token}"

    return PlainHttpBearerPolicy()


class AzureOpenAIAdapter(ProviderAdapter):
    name = "azure_openai"

    def __init__(
        self,
        http: httpx2.AsyncClient,
        accounts: dict[str, Account] | None = None,
        *,
        credential_factory: Callable[[Account], Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._credential_factory = credential_factory
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, str], Secret] = {}  # (account, slot) -> secret from list_keys

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        slot = slot_of(key)
        try:
            probed = await self._with_secret(key, refresh=False)
        except ProviderActionError as exc:
            health = Health.PROVIDER_ERROR if exc.permanent or exc.status else Health.UNREACHABLE
            return self.result(
                key,
                health,
                started,
                error_code="secret_unresolved",
                error_message=f"cannot read {key.secret_ref} from the account: {exc}",
            )
        result = await self._probe_once(probed, started)
        if result.health is Health.INVALID and slot is not None:
            try:
                fresh = await self._with_secret(key, refresh=True)
            except ProviderActionError:
                return result
            if fresh.secret != probed.secret:  # regenerated since we read it: the new value is the key now
                result = await self._probe_once(fresh, started)
        return result

    async def _probe_once(self, key: ManagedKey, started: float) -> ProbeResult:
        endpoint = str(key.options.get("endpoint", "")).rstrip("/")
        answer = await self.http_probe(
            key,
            f"{endpoint}/openai/models",
            started=started,
            params={"api-version": key.options.get("api_version") or DEFAULT_API_VERSION},
            headers=lambda secret: {"api-key": secret},
            refusal=_refusal,
            transport_detail=False,
        )
        if isinstance(answer, ProbeResult):
            return answer
        response, body = answer
        return self.listed(key, started, response, body, ratelimit=openai_ratelimit(response.headers))

    async def _with_secret(self, key: ManagedKey, *, refresh: bool) -> ManagedKey:
        """`key` with its secret in hand: its own, or the account's `key1`/`key2` read through ARM."""
        slot = slot_of(key)
        if slot is None:
            if key.secret is None:
                raise ProviderActionError(
                    f"key {key.name}: {key.secret_ref} is not key1 or key2", permanent=True
                )
            return key
        account = self.account_for(key)
        cache_key = (account.name, slot)
        secret = None if refresh else self._resolved.get(cache_key)
        if secret is None:
            keys = await self._arm(
                account,
                f"list keys of Azure account {self._names(account)[1]}",
                lambda c, rg, name: c.accounts.list_keys(rg, name),
            )
            values = {s: getattr(keys, s, None) for s in SLOTS}
            REGISTRY.add(v for v in values.values() if v)  # masked everywhere before anything can print it
            for s, v in values.items():
                if v:
                    self._resolved[(account.name, s)] = Secret(v)
            secret = self._resolved.get(cache_key)
            if secret is None:
                raise ProviderActionError(f"key {key.name}: the account returned no {slot}", permanent=True)
        return replace(key, secret=secret)

    # -- management -------------------------------------------------------------------------------
    def _names(self, account: Account) -> tuple[str, str, str]:
        opts = account.options
        missing = [f for f in ("subscription_id", "resource_group", "account_name") if not opts.get(f)]
        if missing:
            raise ProviderActionError(f"account {account.name}: {', '.join(missing)} missing", permanent=True)
        return opts["resource_group"], opts["account_name"], opts["subscription_id"]

    def credential(self, account: Account) -> Any:
        """The Azure credential of an account (also used by the usage collector for Monitor and Cost calls)."""
        if self._credential_factory is not None:
            return self._credential_factory(account)
        opts = account.options
        if opts.get("credential") == "client_secret":
            from azure.identity import ClientSecretCredential

            client_secret = opts.get("client_secret")
            if not (opts.get("tenant_id") and opts.get("client_id") and isinstance(client_secret, Secret)):
                raise ProviderActionError(
                    f'account {account.name}: credential = "client_secret" needs tenant_id, client_id and '
                    "client_secret",
                    permanent=True,
                )
            return ClientSecretCredential(opts["tenant_id"], opts["client_id"], client_secret.reveal())
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def _client(self, account: Account) -> Any:
        with self._lock:
            client = self._clients.get(account.name)
            if client is None:
                from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient

                _, _, subscription = self._names(account)
                credential = self.credential(account)
                base_url = (account.base_url or ARM_URL).rstrip("/")
                kw: dict[str, Any] = {
                    "retry_total": 0,
                    "connection_timeout": min(5.0, self.timeout),
                    "read_timeout": self.timeout,
                }
                if base_url.startswith("http://"):
                    kw["authentication_policy"] = plain_http_bearer_policy(credential, ARM_SCOPE)
                client = CognitiveServicesManagementClient(credential, subscription, base_url=base_url, **kw)
                self._clients[account.name] = client
        return client

    async def _arm(self, account: Account, what: str, fn: Callable[[Any, str, str], T]) -> T:
        """One ARM call off the event loop; failures become ProviderActionError, masked."""
        try:
            rg, name, _ = self._names(account)
            return await asyncio.to_thread(lambda: fn(self._client(account), rg, name))
        except ProviderActionError:
            raise
        except Exception as exc:
            raise _arm_error(account, what, exc) from None

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        account = self.account_for(key)
        info = await self._arm(
            account, f"read Azure account {account.name}", lambda c, rg, name: c.accounts.get(rg, name)
        )
        props = getattr(info, "properties", None)
        slot = slot_of(key) or await self._slot_by_value(key, account)
        local_off = bool(getattr(props, "disable_local_auth", False))
        details = {
            "endpoint": getattr(props, "endpoint", None),
            "provisioning_state": getattr(props, "provisioning_state", None),
            "local_auth_disabled": local_off,
            "location": getattr(info, "location", None),
            "sku": getattr(getattr(info, "sku", None), "name", None),
        }
        return KeyMetadata(
            provider_key_id=slot,
            name=getattr(info, "name", None),
            status="local_auth_disabled" if local_off else "active",
            details={k: v for k, v in details.items() if v is not None},
        )

    async def _slot_by_value(self, key: ManagedKey, account: Account) -> str | None:
        """Which of the account's keys this secret is, by comparing values (None: neither, or unknown)."""
        if key.secret is None:
            return None
        keys = await self._arm(
            account,
            f"list keys of Azure account {account.name}",
            lambda c, rg, name: c.accounts.list_keys(rg, name),
        )
        REGISTRY.add(v for v in (keys.key1, keys.key2) if v)
        for s in SLOTS:
            if getattr(keys, s, None) == key.secret.reveal():
                return s
        return None

    async def disable(self, key: ManagedKey) -> None:
        raise NotSupported(NO_DISABLE)

    async def enable(self, key: ManagedKey) -> None:
        raise NotSupported(NO_DISABLE)

    async def regenerate(self, key: ManagedKey) -> Secret:
        """Regenerate the key's slot and return the new value: the old one stops working at once."""
        account = self.account_for(key)
        mgmt.require_destructive(account, key, "regenerating an Azure OpenAI key")
        slot = slot_of(key) or await self._slot_by_value(key, account)
        if slot is None:
            raise ProviderActionError(
                f"key {key.name}: its value is neither key1 nor key2 of account {account.name}: nothing done",
                permanent=True,
            )
        keys = await self._arm(
            account,
            f"regenerate {slot} of Azure account {account.name}",
            lambda c, rg, name: c.accounts.regenerate_key(rg, name, slot.capitalize()),
        )
        value = getattr(keys, slot, None)
        if not value:
            raise ProviderActionError(f"regenerate {slot}: the answer holds no new {slot}")
        REGISTRY.add([value])
        secret = Secret(value)
        self._resolved[(account.name, slot)] = secret
        return secret

    async def revoke(self, key: ManagedKey) -> None:
        await self.regenerate(key)

    # -- rotation: the two-slot scheme; the slot in use is never the one regenerated ------------------
    async def _slot_in_use(self, key: ManagedKey) -> tuple[Account, str]:
        account = self.account_for(key)
        slot = slot_of(key) or await self._slot_by_value(key, account)
        if slot is None:
            raise ProviderActionError(
                f"key {key.name}: its value is neither key1 nor key2 of account {account.name}: "
                "cannot tell which slot is in use, nothing done",
                permanent=True,
            )
        return account, slot

    async def current_credential(self, key: ManagedKey) -> Credential:
        _, slot = await self._slot_in_use(key)
        return Credential(slot, slot, "active")

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        """Both slots: an Azure account always has exactly two valid keys."""
        account = self.account_for(key)
        self._names(account)
        return [Credential(s, s, "active") for s in SLOTS]

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        """Regenerate the slot `key` does NOT use and return it: consumers then move to it."""
        account, in_use = await self._slot_in_use(key)
        other = SLOTS[1 - SLOTS.index(in_use)]
        return NewCredential(other, await self._regenerate_slot(account, other), {"slot": other})

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        raise NotSupported(NO_DISABLE)

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        raise NotSupported(NO_DISABLE)

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """Regenerate slot `credential_id`: its old value stops working; the new value is not kept."""
        slot = credential_id.strip().lower()
        if slot not in SLOTS:
            raise ProviderActionError(f"key {key.name}: {credential_id!r} is not key1 or key2", permanent=True)
        await self._regenerate_slot(self.account_for(key), slot)

    async def _regenerate_slot(self, account: Account, slot: str) -> Secret:
        keys = await self._arm(
            account,
            f"regenerate {slot} of Azure account {account.name}",
            lambda c, rg, name: c.accounts.regenerate_key(rg, name, slot.capitalize()),
        )
        value = getattr(keys, slot, None)
        if not value:
            raise ProviderActionError(
                f"regenerate {slot} of Azure account {account.name}: the answer holds no new {slot}"
            )
        REGISTRY.add(v for v in (getattr(keys, s, None) for s in SLOTS) if v)
        secret = Secret(value)
        self._resolved[(account.name, slot)] = secret
        return secret

    def with_credential(self, key: ManagedKey, new: NewCredential) -> ManagedKey:
        """The key of the new slot: `azure:keyN` references follow the slot; a held secret is replaced."""
        secret_ref = f"azure:{new.id}" if slot_of(key) is not None else key.secret_ref
        return replace(key, secret=new.secret, secret_ref=secret_ref)

    async def account_usages(self, key: ManagedKey) -> list[dict[str, Any]]:
        """The account's quota use (ARM list_usages): name, unit, current value, limit, status."""
        account = self.account_for(key)
        result = await self._arm(
            account,
            f"read usages of Azure account {account.name}",
            lambda c, rg, name: c.accounts.list_usages(rg, name),
        )
        out = []
        for u in getattr(result, "value", None) or []:
            name = getattr(u, "name", None)
            out.append(
                {
                    "name": getattr(name, "value", None),
                    "title": getattr(name, "localized_value", None),
                    "unit": getattr(u, "unit", None),
                    "current": getattr(u, "current_value", None),
                    "limit": getattr(u, "limit", None),
                    "status": getattr(u, "status", None),
                    "next_reset": u.next_reset_time.isoformat()
                    if getattr(u, "next_reset_time", None)
                    else None,
                }
            )
        return out

    async def aclose(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            with contextlib.suppress(Exception):  # closing a pool must never fail shutdown
                c.close()


def _refusal(response: httpx2.Response, body: Any) -> Refusal:
    _, code, message = error_fields(body)
    wait = retry_seconds(response.headers, message)
    return Refusal(
        classify_azure_error(response.status_code, wait),
        code=code,
        message=message,
        ratelimit=openai_ratelimit(response.headers),
        retry_after_seconds=wait,
    )


def _arm_error(account: Account, what: str, exc: BaseException) -> ProviderActionError:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    secrets = [s.reveal() for s in account.options.values() if isinstance(s, Secret)]
    if isinstance(exc, HttpResponseError) and getattr(exc, "status_code", None):
        status = int(exc.status_code or 0)
        code = getattr(getattr(exc, "error", None), "code", None)
        message = getattr(getattr(exc, "error", None), "message", None) or exc.reason or ""
        return mgmt.status_error(what, status, (f"{code} {message}" if code else message).replace("  ", " "), secrets)
    if isinstance(exc, ClientAuthenticationError):
        return ProviderActionError(
            redact_text(f"{what}: no Azure credential ({str(exc).splitlines()[0][:200]})", secrets),
            permanent=True,
        )
    if isinstance(exc, ServiceRequestError):
        return ProviderActionError(f"{what}: cannot reach ARM ({type(exc).__name__})", permanent=False)
    return ProviderActionError(redact_text(f"{what}: {type(exc).__name__}: {exc}"[:400], secrets))
