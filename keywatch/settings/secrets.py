"""Secret references (`env:NAME`, `file:/path`, `credential:NAME`), resolved once at load time into a
`domain.Secret`, which lives only in memory."""

from __future__ import annotations

import os
from pathlib import Path

from keywatch.domain import Secret

SCHEMES = ("env", "file", "credential")
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


def resolve(ref: str, *, allow_literal: bool = False) -> Secret:
    """Resolve `ref` into a Secret. Never returns an empty secret."""
    scheme = scheme_of(ref)
    _, _, arg = ref.partition(":")
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
