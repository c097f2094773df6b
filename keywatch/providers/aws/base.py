"""What the two AWS adapters share: the account that manages a key, its region, the IAM client built
from the account's credentials, and IAM management calls whose failures say honestly whether retrying
can help (both adapters manage their keys through IAM, with the same reach: read, (de)activate, delete).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx2

from keywatch.domain import Account, ManagedKey
from keywatch.providers import mgmt
from keywatch.providers.aws.boto import Boto, client_error_parts, is_client_error, is_transport_error
from keywatch.providers.aws.errors import is_permanent
from keywatch.providers.base import Credential, ProviderActionError, ProviderAdapter
from keywatch.redact import redact_text

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"


class AwsBase(ProviderAdapter):
    """Management credentials and the IAM client both AWS adapters share."""

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._boto = Boto(self.timeout)

    def _region(self, key: ManagedKey, account: Account | None = None) -> str:
        return (
            key.options.get("region")
            or (account.options.get("region") if account else None)
            or DEFAULT_REGION
        )

    def _mgmt_account(self, key: ManagedKey) -> Account | None:
        """The account that manages `key`, or None when none is configured (probe-only use)."""
        if key.account and key.account in self.accounts:
            return self.accounts[key.account]
        matches = [a for a in self.accounts.values() if a.provider == self.name]
        return matches[0] if len(matches) == 1 and not key.account else None

    def _iam(self, key: ManagedKey, account: Account) -> Any:
        """IAM with the account's credentials; without them, boto3's own chain (instance role ...)."""
        access_key_id = account.options.get("access_key_id")
        secret = account.admin_secret.reveal() if account.admin_secret else None
        if secret and not access_key_id:
            raise ProviderActionError(
                f"account {account.name}: admin_secret needs access_key_id (the management key's id)",
                permanent=True,
            )
        return self._boto.client(
            "iam",
            access_key_id=access_key_id,
            secret=secret,
            region=self._region(key, account),
            endpoint=account.options.get("endpoint_url") or account.base_url,
            fingerprint=account.admin_secret.fingerprint if account.admin_secret else "",
        )

    def _secrets(self, key: ManagedKey, account: Account | None = None) -> list[str]:
        out = [key.secret.reveal()] if key.secret else []
        if account and account.admin_secret:
            out.append(account.admin_secret.reveal())
        return out

    async def _mgmt_call(self, key: ManagedKey, account: Account, what: str, fn: Callable[[Any], T]) -> T:
        """One IAM management call; its failure is a ProviderActionError with an honest `permanent` flag."""
        try:
            return await self._boto.run(lambda: fn(self._iam(key, account)))
        except ProviderActionError:
            raise
        except Exception as exc:
            raise self._action_error(key, account, what, exc) from None

    def _action_error(
        self, key: ManagedKey, account: Account, what: str, exc: BaseException
    ) -> ProviderActionError:
        secrets = self._secrets(key, account)
        if is_client_error(exc):
            status, code, message = client_error_parts(exc)
            text = redact_text(f"{what}: {code or 'error'} {message or ''}".strip()[:400], secrets)
            return ProviderActionError(text, permanent=is_permanent(status, code), status=status)
        if is_transport_error(exc):
            return ProviderActionError(f"{what}: cannot reach AWS ({type(exc).__name__})", permanent=False)
        if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
            return ProviderActionError(
                f"{what}: no AWS management credentials (set access_key_id and admin_secret on account "
                f"{account.name}, or give the daemon an instance role)",
                permanent=True,
            )
        return ProviderActionError(redact_text(f"{what}: {type(exc).__name__}: {exc}"[:400], secrets))

    async def disable(self, key: ManagedKey) -> None:
        await self._set_status(key, "Inactive")

    async def enable(self, key: ManagedKey) -> None:
        await self._set_status(key, "Active")

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        """IAM's own words: `Inactive` stops the credential and `Active` restores it, both reversible."""
        raise NotImplementedError

    async def aclose(self) -> None:
        self._boto.clear()

    async def _make_room(
        self, key: ManagedKey, account: Account, user: str, what: str, current_id: str,
        credentials: list[Credential], delete: Callable[[str], Any],
    ) -> None:
        """Before creating a second credential: IAM allows two per user (per service). With two already,
        an inactive one that is not `key`'s own is deleted when the account allows destructive actions;
        otherwise the error names the user, the credentials and what to do."""
        if len(credentials) < 2:
            return
        leftovers = [c for c in credentials if c.id != current_id and c.status == "inactive"]
        if leftovers and account.allow_destructive:
            await delete(leftovers[0].id)
            return
        raise limit_error(user, what, current_id, credentials, account, leftover=bool(leftovers))


def limit_error(
    user: str, what: str, current_id: str, credentials: list[Credential], account: Account, *, leftover: bool
) -> ProviderActionError:
    """IAM's two-per-user limit, explained: whose, which ones, and what a person can do about it."""
    listed = ", ".join(f"{c.id} ({c.status}{', the one in use' if c.id == current_id else ''})" for c in credentials)
    others = [c.id for c in credentials if c.id != current_id]
    if leftover:
        todo = (
            f"delete the inactive {others[0]} or set allow_destructive = true on account {account.name} so "
            "keywatch deletes an inactive leftover itself"
        )
    else:
        todo = (
            f"{' and '.join(others) or 'the other one'} is still active: find out who uses it, then deactivate "
            "and delete it (keywatch deletes only inactive leftovers, and only with allow_destructive)"
        )
    return ProviderActionError(
        f"IAM user {user} already has {len(credentials)} {what}, the most IAM allows per user: {listed}; "
        f"rotation needs room for a new one: {todo}",
        permanent=True,
    )


def aware(value: Any) -> datetime | None:
    """A time as boto3 gives it (a datetime, naive taken as UTC) or as a string or unix seconds."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return mgmt.parse_time(value)
