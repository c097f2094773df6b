"""Pieces the management side of the HTTP adapters share: finding the provider's record of a key,
calling a management endpoint, and reading the provider's timestamps.

A management call is an action on a key, so its failures are ProviderActionError with an honest
`permanent` flag (a refused credential stays refused; an outage passes), and their text is masked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import httpx2

from keywatch.domain import Account, ManagedKey
from keywatch.providers.base import ProviderActionError, ProviderAdapter
from keywatch.providers.errors import error_fields, json_or_none
from keywatch.redact import redact_text

T = TypeVar("T")

# Answers after which retrying the same call cannot succeed without a person changing something.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 410, 422})


def hint_matches(hint: str | None, secret: str) -> bool:
    """True when a provider's redacted form (`sk-ant-api03-R2D...igAA`) fits `secret`.

    Providers show a prefix and a suffix joined by an ellipsis; both parts must match, and a hint
    without an ellipsis (or with empty parts) matches nothing rather than everything.
    """
    if not hint:
        return False
    for sep in ("...", "…", "***", "**"):
        if sep in hint:
            prefix, _, suffix = hint.partition(sep)
            suffix = suffix.lstrip(sep[0])
            if len(prefix) < 3 or not suffix:
                return False
            return secret.startswith(prefix) and secret.endswith(suffix)
    return False


def pick_one(
    candidates: Iterable[T],
    key: ManagedKey,
    *,
    hint_of: Callable[[T], str | None],
    name_of: Callable[[T], str | None],
    provider: str,
) -> T:
    """The provider record of `key`: by redacted hint first (narrowed by name when ambiguous), else by name.

    An ambiguous or absent match is a permanent error that tells the operator to set `provider_key_id`,
    never a guess: acting on the wrong key would be worse than not acting.
    """
    items = list(candidates)
    secret = key.secret.reveal() if key.secret else ""
    by_hint = [c for c in items if secret and hint_matches(hint_of(c), secret)]
    if len(by_hint) > 1:
        by_hint = [c for c in by_hint if name_of(c) == key.name]
    if len(by_hint) == 1:
        return by_hint[0]
    if not by_hint:
        by_name = [c for c in items if name_of(c) == key.name]
        if len(by_name) == 1:
            return by_name[0]
        if len(by_name) > 1:
            raise ProviderActionError(
                f"key {key.name}: {len(by_name)} {provider} keys are named {key.name!r}; "
                "set provider_key_id on the key to say which one",
                permanent=True,
            )
        raise ProviderActionError(
            f"key {key.name}: no {provider} key matches {key.masked} (by its redacted hint) or the name "
            f"{key.name!r} among {len(items)} keys of the account; set provider_key_id on the key",
            permanent=True,
        )
    raise ProviderActionError(
        f"key {key.name}: {len(by_hint)} {provider} keys match {key.masked}; set provider_key_id on the key",
        permanent=True,
    )


async def find_record(
    key: ManagedKey,
    remembered: dict[tuple[str, str], str],
    *,
    provider: str,
    id_field: str,
    hint_field: str,
    read: Callable[[str], Awaitable[dict[str, Any]]],
    list_all: Callable[[], Awaitable[list[Any]]],
) -> dict[str, Any]:
    """The provider's record of `key`: read by its configured or remembered id, else found among all.

    A remembered id is forgotten when the provider answers 404 (the key was replaced) and the search
    runs again; a configured provider_key_id is never second-guessed. The id found is remembered, so
    later calls read one record rather than list the account.
    """
    configured = key.options.get("provider_key_id")
    slot = (key.name, key.fingerprint)
    known = configured or remembered.get(slot)
    if known:
        try:
            return await read(known)
        except ProviderActionError as exc:
            if configured or exc.status != 404:
                raise
            remembered.pop(slot, None)
    records = [r for r in await list_all() if isinstance(r, dict) and r.get(id_field)]
    record = pick_one(
        records,
        key,
        hint_of=lambda r: r.get(hint_field),
        name_of=lambda r: r.get("name"),
        provider=provider,
    )
    remembered[slot] = record[id_field]
    return record


def admin_secret(account: Account, what: str) -> str:
    if account.admin_secret is None:
        raise ProviderActionError(
            f"account {account.name}: {what} needs admin_secret (the management key) on the account",
            permanent=True,
        )
    return account.admin_secret.reveal()


def require_destructive(account: Account, key: ManagedKey, what: str) -> None:
    if not account.allow_destructive:
        raise ProviderActionError(
            f"key {key.name}: {what} cannot be undone; set allow_destructive = true on account "
            f"{account.name} to allow it",
            permanent=True,
        )


def status_error(what: str, status: int, detail: str, secrets: Iterable[str] = ()) -> ProviderActionError:
    """A management call the provider answered with an error: permanent when retrying cannot help."""
    return ProviderActionError(
        redact_text(f"{what}: HTTP {status} {detail}".strip()[:400], list(secrets)),
        permanent=status in PERMANENT_STATUSES,
        status=status,
    )


async def account_call(
    adapter: ProviderAdapter,
    key: ManagedKey,
    method: str,
    path: str,
    *,
    what: str,
    default_base_url: str,
    headers: Callable[[str], dict[str, str]],
    json: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """`call` on the account that manages `key`, with its admin secret in `headers(secret)`.

    The account's base URL wins over the key's, so one management endpoint can serve keys that are
    probed elsewhere; both the admin secret and the key's are masked in any error.
    """
    account = adapter.account_for(key)
    secret = admin_secret(account, what)
    base = (account.base_url or key.base_url or default_base_url).rstrip("/")
    return await call(
        adapter.http,
        method,
        base + path,
        headers=headers(secret),
        what=what,
        timeout=adapter.timeout,
        secrets=[secret] + ([key.secret.reveal()] if key.secret else []),
        json=json,
        params=params,
    )


async def call(
    http: httpx2.AsyncClient,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    what: str,
    timeout: float,
    secrets: Iterable[str] = (),
    json: Any = None,
    params: dict[str, Any] | None = None,
) -> Any:
    """One management request; the decoded JSON body, or ProviderActionError naming `what` failed and why."""
    secrets = list(secrets)
    try:
        response = await http.request(method, url, headers=headers, json=json, params=params, timeout=timeout)
    except httpx2.TimeoutException:
        raise ProviderActionError(f"{what}: no answer within {timeout:g}s", permanent=False) from None
    except httpx2.TransportError as exc:
        raise ProviderActionError(
            redact_text(f"{what}: cannot reach the provider ({type(exc).__name__})", secrets), permanent=False
        ) from None
    body = json_or_none(response)
    if response.status_code >= 300:
        _, _, message = error_fields(body)
        raise status_error(what, response.status_code, message or response.reason_phrase or "", secrets)
    if response.status_code == 204 or not response.content:
        return None
    if body is None:
        raise ProviderActionError(
            f"{what}: the answer is not JSON", permanent=False, status=response.status_code
        )
    return body


def parse_time(value: Any) -> datetime | None:
    """RFC 3339 strings and unix seconds, as providers give them; anything else is unknown (None)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):  # a timestamp no clock has
            return None
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return at if at.tzinfo else at.replace(tzinfo=UTC)
    return None


def decimal_or_none(value: Any) -> Decimal | None:
    """Money as Decimal; a bool, a container or a word is not an amount."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def amount_str(value: Any) -> str | None:
    d = decimal_or_none(value)
    return None if d is None else str(d)
