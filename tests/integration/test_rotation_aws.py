"""Rotation of AWS credentials end to end, published into AWS Secrets Manager on moto's server: an
application reads AWSCURRENT before every request and sends requests during the whole rotation.

- IAM access keys: everything on moto, with its signature checks on (the probe is STS GetCallerIdentity
  signed by the key pair the application read, so a wrong or deleted pair is refused).
- Bedrock API keys (IAM service-specific credentials): moto 5 implements neither
  CreateServiceSpecificCredential (its IAM answers NotImplementedError) nor Bedrock's bearer-token
  authentication (a request carrying `Authorization: Bearer ABSK...` has no SigV4 credential scope, so moto's
  server routes it to S3, 404 NoSuchBucket, and with signature checks on its SigV4 parser fails on it). The
  simulator's `/aws/iam` and `/aws/bedrock` routes stand in for those two parts: the credential calls and
  the key's verification; the destination is Secrets Manager on moto.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from keywatch.domain import Account, Health, ManagedKey, Secret
from keywatch.providers.base import ProviderAdapter
from keywatch.rotation.machine import Machine, Policy, new_rotation
from keywatch.rotation.store import Rotation, RotationStore
from keywatch.secretstores import SecretStoreSettings, open_destination
from keywatch.settings.loader import load_inventory
from keywatch.sim import Simulator
from keywatch.store.repo import Store

from .conftest import moto_server, set_moto_auth

REGION = "us-east-1"


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[str, dict[str, str]]]:
    """moto's server with signature checks on; yields its URL and an administrator's access key."""
    boto3 = pytest.importorskip("boto3", reason="needs keywatch[aws]")
    pytest.importorskip("moto.server", reason="moto[server] is needed to run AWS IAM/STS/Secrets Manager locally")
    with moto_server() as url:
        try:
            set_moto_auth(url, "inf")
            iam = boto3.client(
                "iam",
                endpoint_url=url,
                region_name=REGION,
                aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
                aws_secret_access_key="x" * 40,
            )
            iam.create_user(UserName="kw-aws-rot-admin")
            iam.attach_user_policy(UserName="kw-aws-rot-admin", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
            admin = iam.create_access_key(UserName="kw-aws-rot-admin")["AccessKey"]
            set_moto_auth(url, "0")
            yield url, admin
        finally:
            set_moto_auth(url, "inf")


def client(url: str, admin: dict[str, str], service: str) -> Any:
    import boto3

    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=admin["AccessKeyId"],
        aws_secret_access_key=admin["SecretAccessKey"],
    )


@pytest.fixture
def destination_env(moto: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> SecretStoreSettings:
    """The [secret_stores.aws] of the daemon: moto's endpoint, the administrator's key from the environment
    (boto3's own chain, as on a real host)."""
    url, admin = moto
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", admin["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", admin["SecretAccessKey"])
    return SecretStoreSettings.model_validate({"aws": {"endpoint_url": url, "region": REGION, "timeout": 5}})


def aws_current(sm: Any, name: str) -> str:
    return sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]


class Application:
    """Reads the key from Secrets Manager (AWSCURRENT) before every request, then sends the request."""

    def __init__(self, adapter: ProviderAdapter, sm: Any, name: str, key_of: Any) -> None:
        self.adapter, self.sm, self.name, self.key_of = adapter, sm, name, key_of
        self.sent = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            text = await asyncio.to_thread(aws_current, self.sm, self.name)
            result = await self.adapter.probe(self.key_of(text))
            self.sent += 1
            if result.health is not Health.HEALTHY:
                self.failures.append(f"{result.health} {result.error_code}")
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()


async def rotate_under_load(
    adapter: ProviderAdapter,
    key: ManagedKey,
    dest_ref: str,
    settings: SecretStoreSettings,
    app: Application,
    tmp_path: Path,
) -> tuple[Rotation, list[Any], Store]:
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    store.upgrade()
    rows = RotationStore(store.engine)
    steps: list[str] = []
    at: dict[str, float] = {}

    async def save(r: Rotation) -> None:
        await asyncio.to_thread(rows.save, r)
        steps.append(r.step)
        at.setdefault(r.step, time.monotonic())

    m = Machine(
        adapter,
        [open_destination(dest_ref, settings)],
        save,
        lambda: datetime.now(UTC),
        Policy(
            grace=timedelta(seconds=0.5),
            verify_timeout=timedelta(seconds=15),
            verify_interval=0.05,
            allow_destructive=True,
        ),
    )
    running = asyncio.ensure_future(app.run())
    await asyncio.sleep(0.3)
    r = await m.run(new_rotation(key, "create", actor="test", reason="due", at=datetime.now(UTC)), key)
    while r.state == "running":
        await asyncio.sleep(0.1)
        r = await m.run(r, key)
    await asyncio.sleep(0.3)  # the application goes on after the old credential is gone
    app.stop()
    await running
    assert r.state == "done", r.error
    assert list(dict.fromkeys(steps)) == [
        "started",
        "create",
        "publish_pending",
        "verify",
        "promote",
        "grace",
        "retire_old",
        "done",
    ]
    stored = repr([x.as_dict() for x in rows.history()])
    return r, [stored, at["verify"] - at["publish_pending"]], store


async def test_iam_access_key_rotation_into_secrets_manager_has_no_failed_request(
    moto: tuple[str, dict[str, str]], destination_env: SecretStoreSettings, tmp_path: Path
) -> None:
    from keywatch.providers.aws.iam import AwsIamAdapter

    url, admin = moto
    iam, sm = client(url, admin, "iam"), client(url, admin, "secretsmanager")
    user = f"app-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    first = iam.create_access_key(UserName=user)["AccessKey"]
    name = f"app/aws-{uuid.uuid4().hex[:8]}"
    sm.create_secret(
        Name=name,
        SecretString=json.dumps(
            {"access_key_id": first["AccessKeyId"], "secret_access_key": first["SecretAccessKey"], "region": REGION}
        ),
    )
    account = Account(
        "aws",
        "aws_iam",
        admin_secret=Secret(admin["SecretAccessKey"]),
        options={"access_key_id": admin["AccessKeyId"], "endpoint_url": url, "region": REGION},
    )
    options = {"endpoint_url": url, "region": REGION}

    def key_of(text: str) -> ManagedKey:  # what the application builds its AWS client from
        pair = json.loads(text)
        return ManagedKey(
            "aws-app",
            "aws_iam",
            Secret(pair["secret_access_key"]),
            "aws-sm:x",
            account="aws",
            options={**options, "access_key_id": pair["access_key_id"]},
        )

    async with httpx2.AsyncClient() as http:
        adapter = AwsIamAdapter(http, {"aws": account}, timeout=5)
        key = key_of(aws_current(sm, name))
        assert (await adapter.rotation_support(key)).mode == "create"
        app = Application(adapter, sm, name, key_of)
        r, (stored, _), store = await rotate_under_load(
            adapter, key, f"aws-sm:{name}#secret_access_key", destination_env, app, tmp_path
        )
        assert app.sent > 20 and app.failures == [], app.failures[:5]
        published = json.loads(aws_current(sm, name))
        assert published["access_key_id"] == r.new_credential != first["AccessKeyId"]
        assert published["region"] == REGION  # the other fields of the secret are kept
        left = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        assert [k["AccessKeyId"] for k in left] == [r.new_credential]
        assert (await adapter.probe(key_of(aws_current(sm, name)))).health is Health.HEALTHY
        assert (await adapter.probe(key)).health is Health.INVALID  # the old pair is deleted: refused
        for s in (first["SecretAccessKey"], published["secret_access_key"]):
            assert s not in stored and s[-8:] not in stored
        # The daemon's own key: both halves read from the destination, so its reload after the promote
        # probes the new pair (a literal access_key_id in the config would still name the deleted one).
        cfg = tmp_path / "keywatch.toml"
        cfg.write_text(f"""[daemon]
database = "sqlite:///{tmp_path / "d.db"}"

[[keys]]
name = "aws-app"
provider = "aws_iam"
secret = "aws-sm:{name}#secret_access_key"
access_key_id = "aws-sm:{name}#access_key_id"
endpoint_url = "{url}"
region = "{REGION}"

[secret_stores.aws]
endpoint_url = "{url}"
region = "{REGION}"
""")
        loaded = load_inventory(cfg).key("aws-app")
        assert loaded.options["access_key_id"] == r.new_credential
        assert (await adapter.probe(loaded)).health is Health.HEALTHY
    store.dispose()


async def test_bedrock_api_key_rotation_into_secrets_manager_has_no_failed_request(
    fresh_sim: Simulator, moto: tuple[str, dict[str, str]], destination_env: SecretStoreSettings, tmp_path: Path
) -> None:
    from keywatch.providers.aws.bedrock import AwsBedrockAdapter
    from keywatch.sim.routes import bedrock as bedrock_sim

    url, admin = moto
    sm = client(url, admin, "secretsmanager")
    cred = bedrock_sim.create_credential(fresh_sim.state, "bedrock-app", days=30)  # in use, so propagated
    fresh_sim.state.propagation_delay_s = 0.4  # the new key works only after a while (IAM is eventually consistent)
    name = f"app/bedrock-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=cred["token"])
    account = Account(
        "aws",
        "aws_bedrock",
        admin_secret=Secret("m" * 40),
        options={"access_key_id": "AKIAMANAGEMENT000000", "endpoint_url": f"{fresh_sim.url}/aws/iam"},
    )
    base = f"{fresh_sim.url}/aws/bedrock"

    def key_of(text: str) -> ManagedKey:
        return ManagedKey(
            "bedrock",
            "aws_bedrock",
            Secret(text),
            "aws-sm:x",
            base_url=base,
            account="aws",
            options={"user_name": "bedrock-app"},
        )

    async with httpx2.AsyncClient() as http:
        adapter = AwsBedrockAdapter(http, {"aws": account}, timeout=5)
        key = key_of(cred["token"])
        assert (await adapter.rotation_support(key)).mode == "create"
        app = Application(adapter, sm, name, key_of)
        r, (stored, verify_s), store = await rotate_under_load(
            adapter, key, f"aws-sm:{name}", destination_env, app, tmp_path
        )
        assert verify_s >= 0.3  # verify waited until the new key was accepted (refused before it propagated)
        assert app.sent > 20 and app.failures == [], app.failures[:5]
        published = aws_current(sm, name)
        assert published != cred["token"] and published.startswith("ABSK")
        left = list(bedrock_sim._credentials(fresh_sim.state).values())
        assert [c["ServiceSpecificCredentialId"] for c in left] == [r.new_credential]
        assert left[0]["token"] == published  # the one remaining is the one published
        assert left[0]["ExpirationDate"]  # created with the lifetime of the key it replaced
        assert (await adapter.probe(key)).health is Health.INVALID
        for s in (cred["token"], published):
            assert s not in stored and s[-8:] not in stored
    store.dispose()


async def test_a_bedrock_key_whose_configured_id_was_rotated_away_is_found_by_its_token(fresh_sim: Simulator) -> None:
    from keywatch.providers.aws.bedrock import AwsBedrockAdapter
    from keywatch.sim.routes import bedrock as bedrock_sim

    old = bedrock_sim.create_credential(fresh_sim.state, "bedrock-ids")
    new = bedrock_sim.create_credential(fresh_sim.state, "bedrock-ids")
    del bedrock_sim._credentials(fresh_sim.state)[old["ServiceSpecificCredentialId"]]  # retired by the rotation
    account = Account(
        "aws",
        "aws_bedrock",
        admin_secret=Secret("m" * 40),
        options={"access_key_id": "AKIAMANAGEMENT000000", "endpoint_url": f"{fresh_sim.url}/aws/iam"},
    )
    async with httpx2.AsyncClient() as http:
        adapter = AwsBedrockAdapter(http, {"aws": account}, timeout=5)
        key = ManagedKey(
            "bedrock",
            "aws_bedrock",
            Secret(new["token"]),  # the daemon re-read the published key
            "aws-sm:x",
            account="aws",
            options={"user_name": "bedrock-ids", "provider_key_id": old["ServiceSpecificCredentialId"]},
        )
        assert (await adapter.current_credential(key)).id == new["ServiceSpecificCredentialId"]
        assert (await adapter.metadata(key)).provider_key_id == new["ServiceSpecificCredentialId"]


async def test_assisted_watch_reads_an_aws_sm_and_an_envfile_source_anew_at_every_check(
    moto: tuple[str, dict[str, str]], destination_env: SecretStoreSettings, tmp_path: Path
) -> None:
    """The watch of an assisted rotation reads the source itself each time, never the value cached at load."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from keywatch.rotation.service import RotationService
    from keywatch.runtime import EventLog, Runtime
    from keywatch.settings import secrets as secret_refs
    from keywatch.state import StateTracker

    url, admin = moto
    sm = client(url, admin, "secretsmanager")
    name = f"app/claude-{uuid.uuid4().hex[:8]}"
    sm.create_secret(Name=name, SecretString=json.dumps({"api_key": "sk-ant-api03-" + "A" * 44}))
    ref = f"aws-sm:{name}#api_key"
    assert (await secret_refs.reread(ref, destination_env)).reveal().endswith("A" * 8)  # cached now
    envfile = tmp_path / "claude.env"
    envfile.write_text("CLAUDE_KEY=sk-ant-api03-" + "C" * 44 + "\n")
    store = Store(f"sqlite:///{tmp_path / 'k.db'}")
    inventory = SimpleNamespace(keys=[], config=SimpleNamespace(secret_stores=destination_env))
    rt = Runtime(
        tracker=StateTracker(),
        registry=CollectorRegistry(),
        current_store=lambda: store,
        current_inventory=lambda: inventory,
        adapter=lambda p: None,
        current_scheduler=lambda: None,
        events=EventLog(lambda: store),
    )
    svc = RotationService(rt, RotationStore(store.engine))
    sm_key = ManagedKey("claude", "anthropic", Secret("sk-ant-api03-" + "A" * 44), ref)
    env_key = ManagedKey("claude2", "anthropic", Secret("sk-ant-api03-" + "C" * 44), f"envfile:{envfile}#CLAUDE_KEY")
    assert (await svc.read_source(sm_key)).fingerprint == sm_key.fingerprint
    assert (await svc.read_source(env_key)).fingerprint == env_key.fingerprint
    sm.put_secret_value(SecretId=name, SecretString=json.dumps({"api_key": "sk-ant-api03-" + "B" * 44}))
    envfile.write_text("CLAUDE_KEY=sk-ant-api03-" + "D" * 44 + "\n")
    assert (await svc.read_source(sm_key)).reveal() == "sk-ant-api03-" + "B" * 44
    assert (await svc.read_source(env_key)).reveal() == "sk-ant-api03-" + "D" * 44
    missing = ManagedKey("gone", "anthropic", Secret("x" * 20), f"aws-sm:app/missing-{uuid.uuid4().hex[:6]}")
    assert await svc.read_source(missing) is None  # logged by reference, read again at the next check
    store.dispose()
