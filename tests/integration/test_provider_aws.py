"""AWS adapters over real HTTP: IAM key pairs against moto's server (signatures checked), the answers
moto cannot give (throttling, 5xx, AccessDenied on STS) and Bedrock API keys against the simulator's AWS fake.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.metrics import Metrics
from keywatch.providers.aws.bedrock import AwsBedrockAdapter, bedrock_alias
from keywatch.providers.aws.iam import AwsIamAdapter, user_from_arn
from keywatch.providers.base import ProviderActionError
from keywatch.redact import REGISTRY
from keywatch.sim.server import SimulatorThread
from keywatch.state import StateTracker

from .conftest import free_port, moto_server, set_moto_auth

boto3 = pytest.importorskip(
    "boto3", reason="boto3 is needed for the AWS adapters (pip install keywatch[aws])"
)
pytest.importorskip("moto.server", reason="moto[server] is needed to run AWS IAM/STS locally")

REGION = "us-east-1"
QUARANTINE_ARN = "arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2"


class Moto:
    def __init__(self, url: str, admin: dict[str, str]) -> None:
        self.url = url
        self.admin = admin
        self.iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id=admin["AccessKeyId"],
            aws_secret_access_key=admin["SecretAccessKey"],
        )

    def new_user_key(self, user: str | None = None) -> tuple[str, dict[str, str]]:
        user = user or f"app-{secrets.token_hex(4)}"
        self.iam.create_user(UserName=user)
        return user, self.iam.create_access_key(UserName=user)["AccessKey"]

    def status(self, user: str, access_key_id: str) -> str:
        keys = self.iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        return next(k["Status"] for k in keys if k["AccessKeyId"] == access_key_id)


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    with moto_server() as url:
        yield from _admin(url)


def _admin(url: str) -> Iterator[Moto]:
    try:
        set_moto_auth(url, "inf")
        setup = boto3.client(
            "iam",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
            aws_secret_access_key="x" * 40,
        )
        setup.create_user(UserName="keywatch-admin")
        setup.attach_user_policy(
            UserName="keywatch-admin", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess"
        )
        admin = setup.create_access_key(UserName="keywatch-admin")["AccessKey"]
        set_moto_auth(url, "0")
        yield Moto(url, admin)
    finally:
        set_moto_auth(url, "inf")  # the setting is process-wide in moto: leave it as found


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


def iam_key(
    endpoint: str, access_key_id: str, secret: str, *, account: str | None = None, **options: Any
) -> ManagedKey:
    return ManagedKey(
        name=options.pop("name", "aws-app"),
        provider="aws_iam",
        secret=Secret(secret),
        secret_ref="env:AWS_APP_SECRET",
        account=account,
        options={"access_key_id": access_key_id, "endpoint_url": endpoint, "region": REGION, **options},
    )


def mgmt_account(moto: Moto, **kw: Any) -> Account:
    return Account(
        "aws-main",
        "aws_iam",
        admin_secret=Secret(moto.admin["SecretAccessKey"]),
        options={"access_key_id": moto.admin["AccessKeyId"], "endpoint_url": moto.url, "region": REGION},
        **kw,
    )


# --- IAM probe against moto -----------------------------------------------------------------------


async def test_valid_key_pair_is_healthy_and_names_its_user(moto: Moto, http: httpx2.AsyncClient) -> None:
    user, key = moto.new_user_key()
    adapter = AwsIamAdapter(http, timeout=5)
    result = await adapter.probe(iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"]))
    assert result.health is Health.HEALTHY
    assert result.details["user_name"] == user
    assert result.compromised is False


async def test_unknown_key_id_is_invalid(moto: Moto, http: httpx2.AsyncClient) -> None:
    result = await AwsIamAdapter(http, timeout=5).probe(iam_key(moto.url, "AKIAZZZZZZZZZZZZZZZZ", "s" * 40))
    assert (result.health, result.error_code, result.http_status) == (
        Health.INVALID,
        "InvalidClientTokenId",
        403,
    )


async def test_wrong_secret_is_invalid_and_never_shown(moto: Moto, http: httpx2.AsyncClient) -> None:
    _, key = moto.new_user_key()
    wrong = "wrongSecret/" + "q" * 28
    result = await AwsIamAdapter(http, timeout=5).probe(iam_key(moto.url, key["AccessKeyId"], wrong))
    assert (result.health, result.error_code) == (Health.INVALID, "SignatureDoesNotMatch")
    assert wrong not in json.dumps(result.details) + (result.error_message or "")


# --- IAM probe: the answers moto cannot give, from the simulator's STS fake -----------------------


@pytest.mark.parametrize(
    ("behaviour", "health", "code"),
    [
        ("healthy", Health.HEALTHY, None),
        ("invalid", Health.INVALID, "InvalidClientTokenId"),
        ("forbidden", Health.FORBIDDEN, "AccessDenied"),
        ("rate_limited", Health.RATE_LIMITED, "Throttling"),
        ("server_error", Health.PROVIDER_ERROR, "InternalFailure"),
        ("overloaded", Health.PROVIDER_ERROR, "ServiceUnavailable"),
    ],
)
async def test_sts_answers_map_to_health(
    sim: SimulatorThread, http: httpx2.AsyncClient, behaviour: str, health: Health, code: str | None
) -> None:
    access_key_id = "AKIA" + secrets.token_hex(8).upper()
    sim.set_key(access_key_id, "aws_sts", behaviour)
    result = await AwsIamAdapter(http, timeout=5).probe(
        iam_key(f"{sim.url}/aws/sts", access_key_id, "s" * 40)
    )
    assert (result.health, result.error_code) == (health, code)


async def test_unreachable_endpoint_never_blames_the_key(http: httpx2.AsyncClient) -> None:
    result = await AwsIamAdapter(http, timeout=2).probe(
        iam_key(f"http://127.0.0.1:{free_port()}", "AKIAZZZZZZZZZZZZZZZZ", "s" * 40)
    )
    assert result.health is Health.UNREACHABLE
    assert not result.health.blames_key


async def test_hanging_endpoint_is_unreachable_within_the_probe_timeout(
    sim: SimulatorThread, http: httpx2.AsyncClient
) -> None:
    access_key_id = "AKIA" + secrets.token_hex(8).upper()
    sim.set_key(access_key_id, "aws_sts", "hang")
    result = await AwsIamAdapter(http, timeout=1).probe(
        iam_key(f"{sim.url}/aws/sts", access_key_id, "s" * 40)
    )
    assert (result.health, result.error_code) == (Health.UNREACHABLE, "timeout")


# --- IAM management against moto ------------------------------------------------------------------


async def test_disable_then_enable_round_trip_reads_back_status(moto: Moto, http: httpx2.AsyncClient) -> None:
    user, key = moto.new_user_key()
    adapter = AwsIamAdapter(http, {"aws-main": mgmt_account(moto)}, timeout=5)
    managed = iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"], account="aws-main")
    assert moto.status(user, key["AccessKeyId"]) == "Active"

    await adapter.disable(managed)
    assert moto.status(user, key["AccessKeyId"]) == "Inactive"
    assert (await adapter.metadata(managed)).status == "inactive"
    # moto still accepts requests signed with an Inactive key (a known moto quirk), so "the deactivated key
    # now fails its probe" cannot be shown here; real STS answers InvalidClientTokenId, which maps to invalid.

    await adapter.disable(managed)  # idempotent: disabling twice is not an error
    assert moto.status(user, key["AccessKeyId"]) == "Inactive"

    await adapter.enable(managed)
    assert moto.status(user, key["AccessKeyId"]) == "Active"
    assert (await adapter.metadata(managed)).status == "active"


async def test_metadata_reads_user_created_and_last_use(moto: Moto, http: httpx2.AsyncClient) -> None:
    user, key = moto.new_user_key()
    adapter = AwsIamAdapter(http, {"aws-main": mgmt_account(moto)}, timeout=5)
    managed = iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"], account="aws-main")
    await adapter.probe(managed)  # a use of the key that IAM records
    meta = await adapter.metadata(managed)
    assert meta.provider_key_id == key["AccessKeyId"]
    assert meta.name == user and meta.created_at is not None and meta.last_used_at is not None
    assert meta.compromised is False


async def test_quarantine_policy_shows_as_compromised(moto: Moto, http: httpx2.AsyncClient) -> None:
    user, key = moto.new_user_key()
    adapter = AwsIamAdapter(http, {"aws-main": mgmt_account(moto)}, timeout=5)
    managed = iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"], account="aws-main")
    assert (await adapter.probe(managed)).compromised is False

    moto.iam.attach_user_policy(UserName=user, PolicyArn=QUARANTINE_ARN)
    adapter.quarantine_check_interval = 0  # the cache would otherwise hide the change for 10 minutes
    result = await adapter.probe(managed)
    assert result.compromised is True
    assert "AWSCompromisedKeyQuarantineV2" in (result.compromise_reason or "")
    assert result.health is Health.HEALTHY  # compromise and health are separate facts
    assert (await adapter.metadata(managed)).compromised is True

    tracker = StateTracker()
    tracker.sync_inventory([managed])
    tracker.apply(result)
    metrics = Metrics(CollectorRegistry())
    metrics.attach_state(tracker.snapshot)
    labels = {"key": managed.name, "provider": "aws_iam"}
    assert metrics.registry.get_sample_value("keywatch_key_compromised", labels) == 1.0


async def test_quarantine_check_failure_keeps_the_probe_result(moto: Moto, http: httpx2.AsyncClient) -> None:
    _, key = moto.new_user_key()
    broken = Account(
        "aws-main",
        "aws_iam",
        admin_secret=Secret("w" * 40),
        options={"access_key_id": moto.admin["AccessKeyId"], "endpoint_url": moto.url},
    )
    adapter = AwsIamAdapter(http, {"aws-main": broken}, timeout=5)
    result = await adapter.probe(
        iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"], account="aws-main")
    )
    assert result.health is Health.HEALTHY and result.compromised is False
    assert "SignatureDoesNotMatch" in result.details["compromise_check"]
    assert "w" * 40 not in result.details["compromise_check"]


async def test_revoke_needs_allow_destructive(moto: Moto, http: httpx2.AsyncClient) -> None:
    user, key = moto.new_user_key()
    managed = iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"], account="aws-main")
    with pytest.raises(ProviderActionError, match="allow_destructive"):
        await AwsIamAdapter(http, {"aws-main": mgmt_account(moto)}, timeout=5).revoke(managed)
    assert moto.status(user, key["AccessKeyId"]) == "Active"
    await AwsIamAdapter(http, {"aws-main": mgmt_account(moto, allow_destructive=True)}, timeout=5).revoke(
        managed
    )
    assert moto.iam.list_access_keys(UserName=user)["AccessKeyMetadata"] == []


async def test_management_without_account_says_what_to_configure(
    moto: Moto, http: httpx2.AsyncClient
) -> None:
    _, key = moto.new_user_key()
    with pytest.raises(ProviderActionError, match=r"\[\[accounts\]\]") as err:
        await AwsIamAdapter(http, timeout=5).disable(
            iam_key(moto.url, key["AccessKeyId"], key["SecretAccessKey"])
        )
    assert err.value.permanent


def test_check_json_reports_compromised_key(moto: Moto, tmp_path: Path) -> None:
    user, key = moto.new_user_key()
    moto.iam.attach_user_policy(UserName=user, PolicyArn=QUARANTINE_ARN)
    config = tmp_path / "keywatch.toml"
    config.write_text(f"""
[daemon]
database = "sqlite:///{tmp_path / "kw.db"}"

[[accounts]]
name = "aws-main"
provider = "aws_iam"
access_key_id = "{moto.admin["AccessKeyId"]}"
admin_secret = "env:KW_AWS_ADMIN_SECRET"
endpoint_url = "{moto.url}"
region = "{REGION}"

[[keys]]
name = "app-key"
provider = "aws_iam"
access_key_id = "{key["AccessKeyId"]}"
secret = "env:KW_AWS_APP_SECRET"
endpoint_url = "{moto.url}"
account = "aws-main"
""")
    env = {
        **os.environ,
        "KW_AWS_ADMIN_SECRET": moto.admin["SecretAccessKey"],
        "KW_AWS_APP_SECRET": key["SecretAccessKey"],
    }
    proc = subprocess.run(
        [sys.executable, "-m", "keywatch", "check", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stderr  # a compromised key needs attention even when it authenticates
    [row] = json.loads(proc.stdout)
    assert row["health"] == "healthy"
    assert row["compromised"] is True
    assert "AWSCompromisedKeyQuarantineV2" in row["compromise_reason"]
    assert key["SecretAccessKey"] not in proc.stdout + proc.stderr
    assert moto.admin["SecretAccessKey"] not in proc.stdout + proc.stderr


# --- Bedrock API keys against the simulator's fake ------------------------------------------------


def bedrock_key(sim: SimulatorThread, token: str, **options: Any) -> ManagedKey:
    return ManagedKey(
        name=options.pop("name", "bedrock-app"),
        provider="aws_bedrock",
        secret=Secret(token),
        secret_ref="env:BEDROCK_KEY",
        base_url=f"{sim.url}/aws/bedrock",
        account=options.pop("account", None),
        options=options,
    )


def absk() -> str:
    return "ABSK" + secrets.token_urlsafe(60)


@pytest.mark.parametrize(
    ("behaviour", "health", "code"),
    [
        ("healthy", Health.HEALTHY, None),
        ("invalid", Health.INVALID, "http_403"),
        ("forbidden", Health.FORBIDDEN, "AccessDeniedException"),
        ("rate_limited", Health.RATE_LIMITED, "ThrottlingException"),
        ("server_error", Health.PROVIDER_ERROR, "InternalServerException"),
        ("overloaded", Health.PROVIDER_ERROR, "ServiceUnavailableException"),
        ("bad_body", Health.PROVIDER_ERROR, "bad_response"),
    ],
)
async def test_bedrock_answers_map_to_health(
    sim: SimulatorThread, http: httpx2.AsyncClient, behaviour: str, health: Health, code: str | None
) -> None:
    token = absk()
    sim.set_key(token, "aws_bedrock", behaviour)
    result = await AwsBedrockAdapter(http, timeout=5).probe(bedrock_key(sim, token))
    assert (result.health, result.error_code) == (health, code)
    assert token not in (result.error_message or "")


@pytest.mark.parametrize(
    ("token", "words"),
    [(absk(), "Authentication failed"), ("not-a-bedrock-key-" + "x" * 30, "Invalid API Key format")],
)
async def test_unknown_bedrock_tokens_are_invalid(
    sim: SimulatorThread, http: httpx2.AsyncClient, token: str, words: str
) -> None:
    result = await AwsBedrockAdapter(http, timeout=5).probe(bedrock_key(sim, token))
    assert (result.health, result.http_status) == (Health.INVALID, 403)
    assert words in (result.error_message or "")


async def test_bedrock_unreachable_never_blames_the_key(http: httpx2.AsyncClient) -> None:
    key = ManagedKey(
        name="b",
        provider="aws_bedrock",
        secret=Secret(absk()),
        secret_ref="env:B",
        base_url=f"http://127.0.0.1:{free_port()}",
    )
    assert (await AwsBedrockAdapter(http, timeout=2).probe(key)).health is Health.UNREACHABLE


async def test_bedrock_disable_then_enable_round_trip(sim: SimulatorThread, http: httpx2.AsyncClient) -> None:
    user = f"bedrock-{secrets.token_hex(3)}"
    account = Account(
        "aws-bedrock",
        "aws_bedrock",
        admin_secret=Secret("m" * 40),
        options={"access_key_id": "AKIAMANAGEMENT000001", "endpoint_url": f"{sim.url}/aws/iam"},
    )
    iam = boto3.client(
        "iam",
        endpoint_url=f"{sim.url}/aws/iam",
        region_name=REGION,
        aws_access_key_id="AKIAMANAGEMENT000001",
        aws_secret_access_key="m" * 40,
    )
    created = iam.create_service_specific_credential(
        UserName=user, ServiceName="bedrock.amazonaws.com", CredentialAgeDays=30
    )["ServiceSpecificCredential"]
    token = created["ServiceCredentialSecret"]
    assert bedrock_alias(token) == created["ServiceCredentialAlias"]
    REGISTRY.add([token])
    adapter = AwsBedrockAdapter(http, {"aws-bedrock": account}, timeout=5)
    key = bedrock_key(sim, token, account="aws-bedrock", user_name=user)

    def status() -> str:
        [cred] = iam.list_service_specific_credentials(UserName=user, ServiceName="bedrock.amazonaws.com")[
            "ServiceSpecificCredentials"
        ]
        return cred["Status"]

    assert (await adapter.probe(key)).health is Health.HEALTHY
    meta = await adapter.metadata(key)
    assert (meta.provider_key_id, meta.status) == (created["ServiceSpecificCredentialId"], "active")
    assert "expires_at" in meta.details

    await adapter.disable(key)
    assert status() == "Inactive"
    assert (await adapter.probe(key)).health is Health.INVALID  # the fake, unlike moto, refuses inactive keys

    await adapter.enable(key)
    assert status() == "Active"
    assert (await adapter.probe(key)).health is Health.HEALTHY


async def test_bedrock_management_needs_user_name(sim: SimulatorThread, http: httpx2.AsyncClient) -> None:
    account = Account("aws-bedrock", "aws_bedrock", options={"endpoint_url": f"{sim.url}/aws/iam"})
    with pytest.raises(ProviderActionError, match="user_name"):
        await AwsBedrockAdapter(http, {"aws-bedrock": account}, timeout=5).disable(
            bedrock_key(sim, absk(), account="aws-bedrock")
        )


def test_user_from_arn() -> None:
    assert user_from_arn("arn:aws:iam::123456789012:user/division/app") == "app"
    assert user_from_arn("arn:aws:sts::123456789012:assumed-role/r/s") is None
