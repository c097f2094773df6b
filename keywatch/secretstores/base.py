"""The contract every secret store implements, and the one error a store raises."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from keywatch.domain import Secret

Stage = Literal["current", "pending", "previous"]
STAGES: tuple[Stage, ...] = ("current", "pending", "previous")


class StoreUnavailable(Exception):
    """A store that is down, refuses an operation, or holds something keywatch cannot use.

    The message names the reference and what went wrong, never a value. `permanent` is True when trying
    again cannot help (access denied, the secret does not exist, a value that is not a JSON object)."""

    def __init__(self, ref: str, reason: str, *, permanent: bool = False) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason
        self.permanent = permanent


class BadReference(ValueError):
    """A destination or source reference keywatch cannot parse; the message says what is wrong."""


@runtime_checkable
class Destination(Protocol):
    """Where applications read a key. Every method is idempotent: calling it again after a crash, with the
    same token, ends in the same state and never duplicates a version."""

    ref: str

    async def read(self, stage: Stage = "current") -> Secret | None:
        """The value of `stage`, or None when the store has none for it."""
        ...

    async def write_pending(self, secret: Secret, *, token: str, fields: Mapping[str, str] = {}) -> None:
        """Hold `secret` as the pending stage; the same token again is a no-op."""
        ...

    async def promote(self, *, token: str) -> None:
        """Pending (of `token`) becomes current, current becomes previous; again after success: a no-op."""
        ...

    async def discard_pending(self, *, token: str) -> None:
        """Roll back before promote: the pending value of `token` is no longer offered."""
        ...

    async def stages(self) -> dict[str, str]:
        """Stage -> version id or marker (never a value): what tests and `doctor` compare."""
        ...


def check_token(ref: str, token: str) -> str:
    """Tokens become AWS ClientRequestTokens and file names' companions: 32-64 plain characters."""
    if not (32 <= len(token) <= 64) or not all(c.isalnum() or c in "-_" for c in token):
        raise StoreUnavailable(ref, "a rotation token must be 32-64 letters, digits, - or _", permanent=True)
    return token


def json_object(ref: str, field: str | None, text: str) -> dict[str, Any]:
    """The secret's text as a JSON object, for a reference that names a field of it (`...#field`)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise StoreUnavailable(ref, f"the secret is not a JSON object, so it has no field {field!r}", permanent=True)
    return data


def value_of(ref: str, field: str | None, text: str | None) -> Secret | None:
    """The value a reference reads from a stored secret's text: all of it, or one string field of its JSON."""
    if text is None:
        return None
    if field is None:
        value = text.strip()
    else:
        raw = json_object(ref, field, text).get(field)
        if raw is not None and not isinstance(raw, str):
            raise StoreUnavailable(ref, f"field {field!r} is not a string", permanent=True)
        value = (raw or "").strip()
    return Secret(value) if value else None
