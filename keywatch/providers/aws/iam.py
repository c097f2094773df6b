"""AWS IAM access key pairs (`aws_iam`).

They are probed with `sts.get_caller_identity`, the one AWS call no policy can deny, so the answer is about
the key alone: a bad key id is `InvalidClientTokenId`, a bad secret `SignatureDoesNotMatch`. With
management credentials on an `[[accounts]]` entry the adapter also reads the key's status and last use,
deactivates and re-activates it (`update_access_key`), and looks for the `AWSCompromisedKeyQuarantine*`
managed policy that AWS attaches to a user when it finds one of its keys exposed: that is a compromise
signal, reported on the probe result (at most once per user every `quarantine_check_interval` seconds,
cached), so `check --json`, `status` and /metrics all show it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import httpx2

from keywatch.domain import Account, Health, ManagedKey, ProbeResult, Secret
from keywatch.providers import mgmt
from keywatch.providers.aws.base import AwsBase, aware, limit_error
from keywatch.providers.aws.boto import client_error_parts, is_client_error, is_transport_error
from keywatch.providers.aws.errors import classify_aws_error
from keywatch.providers.base import Credential, KeyMetadata, NewCredential, ProviderActionError
from keywatch.redact import REGISTRY

QUARANTINE_PREFIX = "AWSCompromisedKeyQuarantine"


def user_from_arn(arn: str | None) -> str | None:
    """`arn:aws:iam::123456789012:user/path/name` -> `name`; roles and federated users have no IAM user."""
    if not arn:
        return None
    _, _, resource = arn.partition(":iam::")
    _, _, rest = resource.partition(":")
    if not rest.startswith("user/"):
        return None
    return rest.rsplit("/", 1)[-1] or None


class AwsIamAdapter(AwsBase):
    name = "aws_iam"
    quarantine_check_interval: float = 600.0

    def __init__(
        self, http: httpx2.AsyncClient, accounts: dict[str, Account] | None = None, **kw: Any
    ) -> None:
        super().__init__(http, accounts, **kw)
        self._users: dict[str, str] = {}  # access key id -> IAM user name
        self._quarantine: dict[
            tuple[str, str], tuple[float, str | None]
        ] = {}  # (account, user) -> (at, policy)

    # -- probe ------------------------------------------------------------------------------------
    async def probe(self, key: ManagedKey) -> ProbeResult:
        started = time.perf_counter()
        access_key_id = key.options.get("access_key_id")
        if key.secret is None or not access_key_id:
            return self.result(
                key,
                Health.PROVIDER_ERROR,
                started,
                error_code="no_secret",
                error_message="the key needs access_key_id and secret (the secret access key)",
            )
        try:
            secret = key.secret

            def call() -> Any:  # building a client takes tens of ms: off the event loop too
                return self._boto.client(
                    "sts",
                    access_key_id=access_key_id,
                    secret=secret.reveal(),
                    region=self._region(key),
                    endpoint=key.options.get("endpoint_url"),
                    fingerprint=secret.fingerprint,
                ).get_caller_identity()

            identity = await self._boto.run(call)
        except Exception as exc:
            result = self._probe_error(key, started, exc)
        else:
            user = user_from_arn(identity.get("Arn"))
            if user:
                self._users[access_key_id] = user
            result = self.result(
                key,
                Health.HEALTHY,
                started,
                http_status=200,
                aws_account=identity.get("Account"),
                user_name=user,
            )
        left = self.timeout - (time.perf_counter() - started)
        try:  # the signal is worth having, but not at the price of a probe that overruns its timeout
            async with asyncio.timeout(max(0.5, left)):
                return await self._with_compromise(key, result)
        except TimeoutError:
            return replace(
                result, details={**result.details, "compromise_check": "skipped: probe time used up"}
            )

    def _probe_error(self, key: ManagedKey, started: float, exc: BaseException) -> ProbeResult:
        if is_client_error(exc):
            status, code, message = client_error_parts(exc)
            return self.result(
                key,
                classify_aws_error(status, code, message),
                started,
                http_status=status,
                error_code=code,
                error_message=message,
            )
        if is_transport_error(exc):
            code = "timeout" if "Timeout" in type(exc).__name__ else "connect_error"
            return self.result(
                key,
                Health.UNREACHABLE,
                started,
                error_code=code,
                error_message=f"{type(exc).__name__}: cannot reach the AWS endpoint",
            )
        return self.result(
            key, Health.PROVIDER_ERROR, started, error_code=type(exc).__name__, error_message=str(exc)
        )

    async def _with_compromise(self, key: ManagedKey, result: ProbeResult) -> ProbeResult:
        """Add the quarantine-policy signal when management credentials exist; never fails the probe."""
        account = self._mgmt_account(key)
        if account is None:
            return result
        try:
            user = await self._user(key, account)
            policy = await self._quarantine_policy(key, account, user)
        except ProviderActionError as exc:
            return replace(result, details={**result.details, "compromise_check": str(exc)})
        if policy is None:
            return result
        return replace(
            result,
            compromised=True,
            compromise_reason=f"AWS attached {policy} to IAM user {user}: AWS found this user's key exposed",
        )

    async def _quarantine_policy(self, key: ManagedKey, account: Account, user: str) -> str | None:
        slot = (account.name, user)
        cached = self._quarantine.get(slot)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.quarantine_check_interval:
            return cached[1]

        def read(iam: Any) -> str | None:
            pages = iam.get_paginator("list_attached_user_policies").paginate(UserName=user)
            for page in pages:
                for p in page.get("AttachedPolicies", []):
                    if str(p.get("PolicyName", "")).startswith(QUARANTINE_PREFIX):
                        return str(p["PolicyName"])
            return None

        try:
            policy = await self._mgmt_call(key, account, f"list policies of IAM user {user}", read)
        except ProviderActionError:
            if cached is not None:
                return cached[1]  # the last answer stands while IAM cannot be asked
            raise
        self._quarantine[slot] = (now, policy)
        return policy

    # -- management -------------------------------------------------------------------------------
    async def _user(self, key: ManagedKey, account: Account) -> str:
        """The IAM user owning the key: configured, learned from a probe, or asked of IAM."""
        access_key_id = self._key_id(key)
        user = key.options.get("user_name") or self._users.get(access_key_id)
        if user:
            return user
        answer = await self._mgmt_call(
            key,
            account,
            f"find the IAM user of key {key.name}",
            lambda iam: iam.get_access_key_last_used(AccessKeyId=access_key_id),
        )
        user = answer.get("UserName")
        if not user:
            raise ProviderActionError(
                f"key {key.name}: IAM does not name the key's user; set user_name on the key", permanent=True
            )
        self._users[access_key_id] = user
        return user

    def _key_id(self, key: ManagedKey) -> str:
        access_key_id = key.options.get("access_key_id")
        if not access_key_id:
            raise ProviderActionError(f"key {key.name}: access_key_id is not set", permanent=True)
        return access_key_id

    async def metadata(self, key: ManagedKey) -> KeyMetadata:
        account = self.account_for(key)
        access_key_id = self._key_id(key)
        user = await self._user(key, account)
        listed = await self._mgmt_call(
            key,
            account,
            f"list access keys of IAM user {user}",
            lambda iam: iam.list_access_keys(UserName=user),
        )
        record = next(
            (m for m in listed.get("AccessKeyMetadata", []) if m.get("AccessKeyId") == access_key_id), None
        )
        if record is None:
            raise ProviderActionError(
                f"key {key.name}: IAM user {user} has no access key {access_key_id}", permanent=True
            )
        used = await self._mgmt_call(
            key,
            account,
            f"read last use of key {key.name}",
            lambda iam: iam.get_access_key_last_used(AccessKeyId=access_key_id),
        )
        last = used.get("AccessKeyLastUsed") or {}
        policy = await self._quarantine_policy(key, account, user)
        details = {"user_name": user}
        if last.get("ServiceName") and last.get("ServiceName") != "N/A":
            details["last_used_service"] = last["ServiceName"]
            details["last_used_region"] = last.get("Region")
        return KeyMetadata(
            provider_key_id=access_key_id,
            name=user,
            status=str(record.get("Status", "")).lower() or None,
            created_at=aware(record.get("CreateDate")),
            last_used_at=aware(last.get("LastUsedDate")),
            compromised=policy is not None,
            compromise_reason=f"{policy} is attached to IAM user {user}" if policy else None,
            details=details,
        )

    async def revoke(self, key: ManagedKey) -> None:
        """Delete the key pair: AWS offers no way back, hence the account's explicit opt-in."""
        account = self.account_for(key)
        mgmt.require_destructive(account, key, "deleting an AWS access key")
        access_key_id, user = self._key_id(key), await self._user(key, account)
        await self._mgmt_call(
            key,
            account,
            f"delete access key of {key.name}",
            lambda iam: iam.delete_access_key(UserName=user, AccessKeyId=access_key_id),
        )

    async def _set_status(self, key: ManagedKey, status: str) -> None:
        account = self.account_for(key)
        access_key_id, user = self._key_id(key), await self._user(key, account)
        await self._mgmt_call(
            key,
            account,
            f"set access key of {key.name} {status}",
            lambda iam: iam.update_access_key(UserName=user, AccessKeyId=access_key_id, Status=status),
        )

    # -- rotation: a second access key for the same user; the old one Inactive, then deleted ----------
    async def current_credential(self, key: ManagedKey) -> Credential:
        account = self.account_for(key)
        access_key_id, user = self._key_id(key), await self._user(key, account)
        found = [c for c in await self._credentials(key, account, user) if c.id == access_key_id]
        if not found:
            raise ProviderActionError(
                f"key {key.name}: IAM user {user} has no access key {access_key_id}", permanent=True
            )
        return found[0]

    async def list_credentials(self, key: ManagedKey) -> list[Credential]:
        account = self.account_for(key)
        return await self._credentials(key, account, await self._user(key, account))

    async def _credentials(self, key: ManagedKey, account: Account, user: str) -> list[Credential]:
        """The user's access keys with their last use (IAM's last-used data can lag by hours)."""

        def read(iam: Any) -> list[Credential]:
            out = []
            for page in iam.get_paginator("list_access_keys").paginate(UserName=user):
                for m in page.get("AccessKeyMetadata", []):
                    key_id = m.get("AccessKeyId")
                    if not key_id:
                        continue
                    used = iam.get_access_key_last_used(AccessKeyId=key_id).get("AccessKeyLastUsed") or {}
                    out.append(Credential(
                        id=key_id,
                        name=None,  # IAM access keys have no name
                        status=str(m.get("Status", "")).lower() or "active",
                        created_at=aware(m.get("CreateDate")),
                        last_used_at=aware(used.get("LastUsedDate")),
                    ))
            return out

        return await self._mgmt_call(key, account, f"list access keys of IAM user {user}", read)

    async def create_credential(self, key: ManagedKey, *, name: str) -> NewCredential:
        account = self.account_for(key)
        access_key_id, user = self._key_id(key), await self._user(key, account)
        credentials = await self._credentials(key, account, user)
        await self._make_room(
            key, account, user, "access keys", access_key_id, credentials,
            lambda cid: self.delete_credential(key, cid),
        )
        try:
            answer = await self._mgmt_call(
                key, account, f"create an access key for IAM user {user}",
                lambda iam: iam.create_access_key(UserName=user),
            )
        except ProviderActionError as exc:
            if "LimitExceeded" not in str(exc):
                raise
            fresh = await self._credentials(key, account, user)  # created meanwhile by someone else
            raise limit_error(user, "access keys", access_key_id, fresh, account,
                              leftover=any(c.status == "inactive" and c.id != access_key_id for c in fresh)) from None
        created = answer.get("AccessKey") or {}
        new_id, secret = created.get("AccessKeyId"), created.get("SecretAccessKey")
        if not new_id or not secret:
            raise ProviderActionError(f"create an access key for IAM user {user}: the answer carries no key")
        REGISTRY.add([secret])
        self._users[new_id] = user
        return NewCredential(new_id, Secret(secret), {"access_key_id": new_id})

    async def deactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._set_credential_status(key, credential_id, "Inactive")

    async def reactivate_credential(self, key: ManagedKey, credential_id: str) -> None:
        await self._set_credential_status(key, credential_id, "Active")

    async def delete_credential(self, key: ManagedKey, credential_id: str) -> None:
        """delete_access_key; the caller decides whether it may (rollback of a new key, or after grace)."""
        account = self.account_for(key)
        user = await self._user(key, account)
        await self._mgmt_call(
            key, account, f"delete access key {credential_id} of IAM user {user}",
            lambda iam: iam.delete_access_key(UserName=user, AccessKeyId=credential_id),
        )

    async def _set_credential_status(self, key: ManagedKey, credential_id: str, status: str) -> None:
        account = self.account_for(key)
        user = await self._user(key, account)
        await self._mgmt_call(
            key, account, f"set access key {credential_id} of IAM user {user} {status}",
            lambda iam: iam.update_access_key(UserName=user, AccessKeyId=credential_id, Status=status),
        )

    def with_credential(self, key: ManagedKey, new: NewCredential) -> ManagedKey:
        """The new key pair: its access_key_id, the same user."""
        options = {**key.options, "access_key_id": new.id}
        user = key.options.get("user_name") or self._users.get(self._key_id(key))
        if user:
            options["user_name"] = user
        options.pop("provider_key_id", None)
        return replace(key, secret=new.secret, options=options)
