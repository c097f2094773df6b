"""Pieces the management side of the HTTP adapters share: finding the provider's record of a key,
calling a management endpoint, reading the provider's timestamps, and `AdminApiAdapter`, the record
handling of an HTTP admin API for keys (find, read, list, change status, delete) with each provider's
paths, field names and status words given as data (`AdminApi`).

A management call is an action on a key, so its failures are ProviderActionError with an honest
`permanent` flag (a refused credential stays refused; an outage passes), and their text is masked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar

import httpx2

from keywatch.domain import Account, ManagedKey
from keywatch.providers import registry
from keywatch.providers.base import KeyMetadata, ProviderActionError, ProviderAdapter
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


@dataclass(frozen=True)
class Pages:
    """How a provider's key list comes in pages: the records' field on a page, the first page's params,
    and from a page (its records, the params that asked for it) the next page's params, None after the last."""

    records_field: str
    first: dict[str, Any]
    next: Callable[[dict[str, Any], list[Any], dict[str, Any]], dict[str, Any] | None]


def cursor_pages(
    *, records_field: str, limit_param: str, limit: int, more_field: str, last_field: str, after_param: str
) -> Pages:
    """Pages of `limit` records (`limit_param`) that say whether more follow (`more_field`) and their last
    id (`last_field`); the next one starts `after_param` it."""

    def after(page: dict[str, Any], records: list[Any], params: dict[str, Any]) -> dict[str, Any] | None:
        if not page.get(more_field) or not page.get(last_field):
            return None
        return {limit_param: limit, after_param: page[last_field]}

    return Pages(records_field, {limit_param: limit}, after)


def offset_pages(*, records_field: str, offset_param: str, params: Mapping[str, Any]) -> Pages:
    """Pages asked for by `offset_param`, the number of records seen, until one comes back empty."""

    def after(page: dict[str, Any], records: list[Any], asked: dict[str, Any]) -> dict[str, Any] | None:
        return {**asked, offset_param: asked[offset_param] + len(records)} if records else None

    return Pages(records_field, {**params, offset_param: 0}, after)


@dataclass(frozen=True)
class Records:
    """Where a provider keeps its key records: the collection (one record at f"{path}/{id}"), the record's
    id and redacted-secret fields, and how a read answer holds the record: itself, or in `read_field`;
    with `read_fills_id`, an answer may leave the id out (it is the id asked for)."""

    path: str
    id_field: str
    hint_field: str
    read_field: str | None = None
    read_fills_id: bool = False


@dataclass(frozen=True)
class Statuses:
    """A key record's status in the provider's words, and how to ask for one (`method` on the record).

    `final` statuses nothing brings back: from them only `retired` can still be set. `verbs` name a
    change in messages (`disable OpenRouter key k`); without one it is `set Anthropic key k inactive`."""

    of: Callable[[dict[str, Any]], str | None]
    body: Callable[[str], dict[str, Any]]
    method: str
    disabled: str  # the status `disable` sets
    active: str  # the status `enable` sets
    final: frozenset[str] = frozenset()
    retired: str | None = None
    verbs: Mapping[str, str] = field(default_factory=dict)


def status_word(
    field_name: str,
    *,
    method: str,
    disabled: str,
    active: str,
    final: Iterable[str] = (),
    retired: str | None = None,
) -> Statuses:
    """A status field that holds a word (`"status": "inactive"`), set by sending the word."""
    return Statuses(
        of=lambda record: record.get(field_name),
        body=lambda status: {field_name: status},
        method=method,
        disabled=disabled,
        active=active,
        final=frozenset(final),
        retired=retired,
    )


def status_flag(field_name: str, *, method: str, on: str, off: str) -> Statuses:
    """A flag (`"disabled": true`) that is the status `on` when set and `off` when not; changes are named
    `disable` and `enable`."""
    return Statuses(
        of=lambda record: on if record.get(field_name) else off,
        body=lambda status: {field_name: status == on},
        method=method,
        disabled=on,
        active=off,
        verbs={on: "disable", off: "enable"},
    )


@dataclass(frozen=True)
class AdminApi:
    """What one provider's HTTP admin API for keys is made of; `AdminApiAdapter` does the rest with it.

    The provider's title (in messages) and its default base URL come from its ProviderInfo."""

    records: Records
    pages: Pages
    statuses: Statuses
    headers: Callable[[str], dict[str, str]]  # the admin secret -> the request's auth headers
    metadata: Callable[[dict[str, Any]], KeyMetadata]


class AdminApiAdapter(ProviderAdapter):
    """An adapter whose keys are records of an HTTP admin API (`admin_api`), managed with the account's
    admin secret: metadata, disable and enable here; revoke (and create) in the adapter, as its provider
    offers them."""

    admin_api: ClassVar[AdminApi]

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._record_ids: dict[tuple[str, str], str] = {}  # (key name, fingerprint) -> the record's id
        self._title = registry.info(self.name).title

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        return self.admin_api.metadata(await self.find_record(key))

    async def disable(self, key: ManagedKey) -> None:
        await self.set_status(key, self.admin_api.statuses.disabled)

    async def enable(self, key: ManagedKey) -> None:
        await self.set_status(key, self.admin_api.statuses.active)

    async def set_status(self, key: ManagedKey, status: str) -> None:
        """Ask for `status` unless the record has it; a final status refuses all but the retired one."""
        statuses = self.admin_api.statuses
        record = await self.find_record(key)
        current = statuses.of(record)
        if current == status:
            return
        if current in statuses.final and status != statuses.retired:
            raise ProviderActionError(
                f"key {key.name}: the {self._title} key is {current} and cannot be made {status}",
                permanent=True,
            )
        verb = statuses.verbs.get(status)
        await self.admin_call(
            key,
            statuses.method,
            self._record_path(record),
            what=f"{verb} {self._title} key {key.name}" if verb else f"set {self._title} key {key.name} {status}",
            json=statuses.body(status),
        )

    async def delete_record(self, key: ManagedKey) -> None:
        record = await self.find_record(key)
        await self.admin_call(key, "DELETE", self._record_path(record), what=f"delete {self._title} key {key.name}")
        self._record_ids.pop((key.name, key.fingerprint), None)

    async def find_record(self, key: ManagedKey) -> dict[str, Any]:
        records = self.admin_api.records
        return await find_record(
            key,
            self._record_ids,
            provider=self._title,
            id_field=records.id_field,
            hint_field=records.hint_field,
            read=lambda record_id: self._read_record(key, record_id),
            list_all=lambda: self._list_records(key),
        )

    def _record_path(self, record: dict[str, Any]) -> str:
        records = self.admin_api.records
        return f"{records.path}/{record[records.id_field]}"

    async def _read_record(self, key: ManagedKey, record_id: str) -> dict[str, Any]:
        records = self.admin_api.records
        what = f"read {self._title} key {key.name}"
        body = await self.admin_call(key, "GET", f"{records.path}/{record_id}", what=what)
        if records.read_field is not None:
            body = body.get(records.read_field) if isinstance(body, dict) else None
        if not isinstance(body, dict) or not (records.read_fills_id or body.get(records.id_field)):
            raise ProviderActionError(f"read {self._title} key {key.name}: the answer is not a key object")
        if records.read_fills_id:
            body.setdefault(records.id_field, record_id)
        return body

    async def _list_records(self, key: ManagedKey) -> list[Any]:
        pages = self.admin_api.pages
        records: list[Any] = []
        params: dict[str, Any] | None = pages.first
        for _ in range(1000):
            if params is None:
                break
            page = await self.admin_call(
                key, "GET", self.admin_api.records.path, what=f"list {self._title} keys", params=params
            )
            data = page.get(pages.records_field) if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise ProviderActionError(f"list {self._title} keys: the answer is not the documented list shape")
            records += data
            params = pages.next(page, data, params)
        return records

    async def admin_call(self, key: ManagedKey, method: str, path: str, *, what: str, **kw: Any) -> Any:
        """`account_call` with the provider's default base URL and its admin headers."""
        return await account_call(
            self,
            key,
            method,
            path,
            what=what,
            default_base_url=registry.info(self.name).default_base_url or "",
            headers=self.admin_api.headers,
            **kw,
        )


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
