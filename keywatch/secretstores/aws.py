"""AWS Secrets Manager: `aws-sm:<secret-id>[#json-field]`.

The staging protocol is AWS's own (the one its rotation functions follow): the new value is put as a new
version labelled AWSPENDING with the rotation token as ClientRequestToken (so the version id *is* the token and
a repeat is a no-op); promote moves AWSCURRENT to it with update_secret_version_stage (Secrets Manager itself
moves AWSPREVIOUS to the version AWSCURRENT left) and takes AWSPENDING off; discard takes AWSPENDING off.
With `#field` the secret is a JSON object: the key's value is that field, `fields` are written beside it and
every other field is kept (read from AWSCURRENT, modified, written as the new version).

boto3 is synchronous: each call runs in a worker thread with the configured timeout and at most two attempts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any

from keywatch.domain import Secret
from keywatch.secretstores.base import BadReference, Stage, StoreUnavailable, check_token, json_object, value_of
from keywatch.secretstores.config import AwsStoreSettings

LABELS: dict[str, str] = {"current": "AWSCURRENT", "pending": "AWSPENDING", "previous": "AWSPREVIOUS"}
DEFAULT_REGION = "us-east-1"

# errors after which trying again cannot help (the others: throttling, 5xx, timeouts, connection: transient)
_PERMANENT = {
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId",
    "InvalidSignatureException", "ResourceNotFoundException", "InvalidRequestException",
    "InvalidParameterException", "DecryptionFailure", "ResourceExistsException", "ValidationException",
    "ExpiredTokenException", "KMSAccessDeniedException",
}


def parse_aws_ref(ref: str) -> tuple[str, str | None]:
    body = ref.removeprefix("aws-sm:")
    secret_id, sep, field = body.partition("#")
    if not secret_id or len(secret_id) > 2048:
        raise BadReference(f"{ref}: expected aws-sm:<secret name or ARN>[#json-field]")
    if sep and not field:
        raise BadReference(f"{ref}: empty JSON field after #")
    return secret_id, field or None


_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client(settings: AwsStoreSettings) -> Any:
    """One boto3 client per settings (clients are thread-safe; sessions are not, so built under a lock)."""
    key = (settings.region, settings.endpoint_url, settings.profile, settings.timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session(profile_name=settings.profile)
            client = session.client(
                "secretsmanager",
                region_name=settings.region or session.region_name or DEFAULT_REGION,
                endpoint_url=settings.endpoint_url,
                config=Config(
                    connect_timeout=settings.timeout,
                    read_timeout=settings.timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
            _clients[key] = client
    return client


class AwsSecretsManagerDestination:
    def __init__(self, ref: str, secret_id: str, field: str | None, settings: AwsStoreSettings) -> None:
        self.ref = ref
        self.secret_id = secret_id
        self.field = field
        self.settings = settings

    # ---- plumbing
    async def _call(self, op: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self._call_sync, op, params)

    def _call_sync(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise StoreUnavailable(self.ref, "boto3 is not installed (pip install 'keywatch[aws]')",
                                   permanent=True) from None
        try:
            client = _client(self.settings)
            return getattr(client, op)(**params)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code") or "error")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            raise _ClientFailure(code, status) from None
        except BotoCoreError as exc:  # connection refused, timeouts, no credentials, bad profile
            permanent = type(exc).__name__ in ("NoCredentialsError", "ProfileNotFound", "NoRegionError")
            raise StoreUnavailable(self.ref, f"{op}: {type(exc).__name__}", permanent=permanent) from None

    def _unavailable(self, op: str, exc: _ClientFailure) -> StoreUnavailable:
        if exc.code == "ResourceNotFoundException":
            return StoreUnavailable(self.ref, f"{op}: the secret does not exist (create it first)", permanent=True)
        status = f" (HTTP {exc.status})" if exc.status else ""
        return StoreUnavailable(self.ref, f"{op}: {exc.code}{status}", permanent=exc.code in _PERMANENT)

    async def _get(self, label: str | None = None, *, version_id: str | None = None) -> str | None:
        where = {"VersionStage": label} if label else {"VersionId": version_id}
        try:
            answer = await self._call("get_secret_value", SecretId=self.secret_id, **where)
        except _ClientFailure as exc:
            if exc.code == "ResourceNotFoundException" and label != "AWSCURRENT":
                return None  # the secret has no version with that label
            raise self._unavailable("get_secret_value", exc) from None
        if "SecretString" not in answer:
            raise StoreUnavailable(self.ref, "the secret is binary; keywatch reads SecretString only", permanent=True)
        return answer["SecretString"]

    async def _versions(self) -> dict[str, list[str]]:
        try:
            answer = await self._call("describe_secret", SecretId=self.secret_id)
        except _ClientFailure as exc:
            raise self._unavailable("describe_secret", exc) from None
        return {vid: list(labels) for vid, labels in (answer.get("VersionIdsToStages") or {}).items()}


    # ---- Destination
    async def read(self, stage: Stage = "current") -> Secret | None:
        return value_of(self.ref, self.field, await self._get(LABELS[stage]))


    async def write_pending(self, secret: Secret, *, token: str, fields: Mapping[str, str] = {}) -> None:
        check_token(self.ref, token)
        versions = await self._versions()
        if token in versions:  # written by an earlier try: the same value, labelled pending (again)
            held = value_of(self.ref, self.field, await self._get(version_id=token))
            if held != secret:
                raise StoreUnavailable(
                    self.ref, "this rotation token already holds a different value", permanent=True
                )
            if "AWSPENDING" not in versions[token] and "AWSCURRENT" not in versions[token]:
                await self._stage("AWSPENDING", move_to=token)  # discarded before: offered again
            return
        if self.field is None:
            value = secret.reveal()
        else:
            current = await self._get("AWSCURRENT")
            data = json_object(self.ref, self.field, current) if current is not None else {}
            data.update(fields)
            data[self.field] = secret.reveal()
            value = json.dumps(data)
        try:
            await self._call(
                "put_secret_value", SecretId=self.secret_id, ClientRequestToken=token, SecretString=value,
                VersionStages=["AWSPENDING"],
            )
        except _ClientFailure as exc:
            if exc.code == "ResourceExistsException":
                raise StoreUnavailable(
                    self.ref, "this rotation token already holds a different value", permanent=True
                ) from None
            raise self._unavailable("put_secret_value", exc) from None

    async def _stage(self, label: str, *, move_to: str | None = None, remove_from: str | None = None) -> None:
        params: dict[str, Any] = {"SecretId": self.secret_id, "VersionStage": label}
        if move_to:
            params["MoveToVersionId"] = move_to
        if remove_from:
            params["RemoveFromVersionId"] = remove_from
        try:
            await self._call("update_secret_version_stage", **params)
        except _ClientFailure as exc:
            raise self._unavailable("update_secret_version_stage", exc) from None

    async def promote(self, *, token: str) -> None:
        check_token(self.ref, token)
        versions = await self._versions()
        labels = versions.get(token)
        if labels is None:
            raise StoreUnavailable(self.ref, "no version was written for this rotation token", permanent=True)
        if "AWSCURRENT" not in labels:
            current = next((v for v, ls in versions.items() if "AWSCURRENT" in ls), None)
            await self._stage("AWSCURRENT", move_to=token, remove_from=current)
        if "AWSPENDING" in labels:
            await self._stage("AWSPENDING", remove_from=token)

    async def discard_pending(self, *, token: str) -> None:
        check_token(self.ref, token)
        labels = (await self._versions()).get(token) or []
        if "AWSCURRENT" in labels:
            raise StoreUnavailable(self.ref, "this rotation's version is already AWSCURRENT; nothing to discard",
                                   permanent=True)
        if "AWSPENDING" in labels:
            await self._stage("AWSPENDING", remove_from=token)

    async def stages(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for vid, labels in (await self._versions()).items():
            for stage, label in LABELS.items():
                if label in labels:
                    out[stage] = vid
        return out


class _ClientFailure(Exception):
    """An AWS error answer, carried out of the worker thread without its message (which may quote input)."""

    def __init__(self, code: str, status: int | None) -> None:
        super().__init__(code)
        self.code = code
        self.status = status
