"""Secret references (`env:NAME`, `file:/path`, `credential:NAME`, and the secret stores `aws-sm:...` and
`azure-kv:...`), resolved at load time into a `domain.Secret`, which lives only in memory.

Values read from a secret store are cached per reference. A load (the start, every SIGHUP) reads the store
again; when the store is down then, the cached value stays in use and `resolve_source` says so (the loader
turns that into an alert, not a config error). With no cached value (the first start, a key added at a
reload) a store that is down is a config error naming the reference. `reread` reads one reference again on
demand (after a rotation promoted a new value)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from keywatch.domain import Secret
from keywatch.secretstores import SOURCE_SCHEMES, BadReference, SecretStoreSettings, StoreUnavailable, open_destination

T = TypeVar("T")

SCHEMES = ("env", "file", "credential", *SOURCE_SCHEMES)
# References resolved later by the provider itself from its account (e.g. `azure:key1`).
DEFERRED_SCHEMES = ("azure",)


class SecretError(Exception):
    """A reference that cannot be resolved. The message never contains the secret."""


def scheme_of(ref: str) -> str | None:
    head, sep, _ = ref.partition(":")
    if sep and head in SCHEMES + DEFERRED_SCHEMES:
        return head
    return None


def is_reference(ref: str) -> bool:
    return scheme_of(ref) is not None


_cache: dict[str, Secret] = {}
_cache_lock = threading.Lock()


def cached(ref: str) -> Secret | None:
    with _cache_lock:
        return _cache.get(ref)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a store call to completion from synchronous code, whether or not this thread runs a loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    th = threading.Thread(target=target, name="keywatch-secret-store")
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


async def reread(ref: str, stores: SecretStoreSettings | None = None) -> Secret:
    """Read a secret-store reference again now (AWSCURRENT / the latest version) and cache it. Raises
    StoreUnavailable when the store is down (the cached value is left as it was), SecretError when the
    store holds no value."""
    try:
        value = await open_destination(ref, stores).read("current")
    except BadReference as exc:
        raise SecretError(str(exc)) from None
    if value is None:
        raise SecretError(f"{ref}: the store holds no value")
    with _cache_lock:
        _cache[ref] = value
    return value


def resolve_source(ref: str, stores: SecretStoreSettings | None = None) -> tuple[Secret, str | None]:
    """A secret-store reference read now: (value, None), or, with the store down and a value cached,
    (the cached value, why the store could not be read). No cached value: SecretError naming the ref."""
    try:
        return _run(reread(ref, stores)), None
    except StoreUnavailable as exc:
        held = cached(ref)
        if held is None:
            raise SecretError(f"cannot be read from the store: {exc}") from None
        return held, str(exc)


def resolve(ref: str, *, allow_literal: bool = False, stores: SecretStoreSettings | None = None) -> Secret:
    """Resolve `ref` into a Secret. Never returns an empty secret."""
    scheme = scheme_of(ref)
    _, _, arg = ref.partition(":")
    if scheme in SOURCE_SCHEMES:
        return resolve_source(ref, stores)[0]
    if scheme is None:
        if not allow_literal:
            raise SecretError("is a literal secret; use env:NAME, file:/path or credential:NAME")
        value = ref
    elif scheme == "env":
        if arg not in os.environ:
            raise SecretError(f"environment variable {arg} is not set")
        value = os.environ[arg]
    elif scheme == "file":
        value = _read(Path(arg), f"file {arg}")
    elif scheme == "credential":
        base = os.environ.get("CREDENTIALS_DIRECTORY")
        if not base:
            raise SecretError(
                f"credential {arg}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the systemd unit)"
            )
        if "/" in arg or arg in ("", ".", ".."):
            raise SecretError(f"credential name {arg!r} is not a plain name")
        value = _read(Path(base) / arg, f"credential {arg}")
    else:
        raise SecretError(f"{scheme}: references are resolved by the provider, not here")
    value = value.strip()
    if not value:
        raise SecretError(f"{ref.partition(':')[0] or 'value'} {arg} is empty")
    return Secret(value)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise SecretError(f"{what} does not exist") from None
    except PermissionError:
        raise SecretError(f"{what} is not readable by this user") from None
    except OSError as exc:
        raise SecretError(f"{what} cannot be read: {exc.strerror}") from None
