"""Provider-side signals become containment: an OpenRouter key deactivated at the provider without keywatch,
an OpenAI key gone from its project's key list, an AWS key with the quarantine policy, and an AWS Health
AWS_RISK_CREDENTIALS_EXPOSED event (against the simulator's Health route: moto has no Health service)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from keywatch.sim.routes import aws_health
from tests.integration.conftest import moto_server, set_moto_auth
from tests.integration.leaks_harness import start, stop

OPENAI = "sk-proj-" + "Lk8" * 16 + "T3BlbkFJ" + "q2" * 10
OPENAI_ADMIN = "sk-admin-" + "Zr8Qp3Lm5Nx7" * 4


async def test_a_key_deactivated_at_the_provider_without_keywatch_is_contained(tmp_path: Path) -> None:
    h = await start(tmp_path, 3, tag="SIG")
    try:
        await h.cycles(1)
        await h.leaks.signals.check_statuses()  # the provider's word about each key: active
        assert h.alerts_for("compromised:k2") == []
        h.sim.state.keys[h.secrets["k2"]].extra["disabled"] = True  # someone (the provider) did it
        await h.leaks.signals.check_statuses()
        await h.leaks.idle()
        [alert] = h.alerts_for("compromised:k2")
        assert alert.fields["source"] == "openrouter_status"
        assert "without keywatch" in alert.fields["location"]
        assert h.admin("k2") == "disabled" and "k2" not in h.pooled()
        # keywatch's own disables are not signals.
        await h.leaks.signals.check_statuses()
        assert len(h.alerts_for("compromised:k2")) == 1
        assert h.alerts_for("compromised:k1") == []
    finally:
        await stop(h)


async def test_an_openai_key_gone_from_its_project_is_contained(tmp_path: Path) -> None:
    os.environ["KW_LEAK_OA_ADMIN"] = OPENAI_ADMIN
    os.environ["KW_LEAK_OA_KEY"] = OPENAI
    extra = """
[[accounts]]
name = "org"
provider = "openai"
admin_secret = "env:KW_LEAK_OA_ADMIN"
base_url = "{sim}/openai/v1"

[[keys]]
name = "oa"
provider = "openai"
secret = "env:KW_LEAK_OA_KEY"
base_url = "{sim}/openai/v1"
account = "org"
"""

    def prepare(sim) -> None:
        sim.set_key(OPENAI_ADMIN, "openai", "admin")
        sim.set_key(OPENAI, "openai", project_id="proj_prod", key_id="key_prod", name="oa")

    h = await start(tmp_path, 1, tag="OAG", extra=extra, prepare=prepare)
    try:
        await h.cycles(1)
        await h.leaks.signals.check_statuses()
        assert h.leaks.signals.status["oa"] == "active"
        del h.sim.state.keys[OPENAI]  # OpenAI deleted the leaked key
        await h.leaks.signals.check_statuses()
        await h.leaks.idle()
        [alert] = h.alerts_for("compromised:oa")
        assert alert.fields["source"] == "openai_status"
        assert "gone from its project's key list" in alert.fields["location"]
        assert h.admin("oa") == "disabled"
    finally:
        await stop(h)


@pytest.fixture(scope="module")
def moto():
    with moto_server() as url:
        set_moto_auth(url, "inf")
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
            aws_secret_access_key="x" * 40,
        )
        iam.create_user(UserName="kw-admin")
        iam.attach_user_policy(UserName="kw-admin", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
        admin = iam.create_access_key(UserName="kw-admin")["AccessKey"]
        try:
            yield url, iam, admin
        finally:
            set_moto_auth(url, "inf")


async def test_aws_quarantine_and_health_event_contain_the_keys(tmp_path: Path, moto) -> None:
    url, iam, admin = moto
    keys = {}
    for user in ("quarantined", "exposed", "fine"):
        iam.create_user(UserName=user)
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
    iam.attach_user_policy(UserName="quarantined", PolicyArn="arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV2")
    os.environ["KW_LEAK_AWS_ADMIN"] = admin["SecretAccessKey"]
    extra = f"""
[[accounts]]
name = "aws-main"
provider = "aws_iam"
access_key_id = "{admin["AccessKeyId"]}"
admin_secret = "env:KW_LEAK_AWS_ADMIN"
endpoint_url = "{url}"
region = "us-east-1"
"""
    for user, k in keys.items():
        os.environ[f"KW_LEAK_AWS_{user.upper()}"] = k["SecretAccessKey"]
        extra += f"""
[[keys]]
name = "{user}"
provider = "aws_iam"
access_key_id = "{k["AccessKeyId"]}"
secret = "env:KW_LEAK_AWS_{user.upper()}"
endpoint_url = "{url}"
account = "aws-main"
"""
    leaks = 'aws_health_accounts = ["aws-main"]\naws_health_endpoint_url = "{sim}/aws-health"'
    h = await start(
        tmp_path,
        1,
        tag="AWS",
        extra=extra,
        leaks=leaks,
        prepare=lambda sim: aws_health.plant_exposure(sim.state, keys["exposed"]["AccessKeyId"]),
    )
    try:
        await h.cycles(1)  # the probe sees the quarantine policy; the Health check runs in the same cycle
        await h.leaks.idle()
        status = {u: next(m["Status"] for m in iam.list_access_keys(UserName=u)["AccessKeyMetadata"]) for u in keys}
        assert status == {"quarantined": "Inactive", "exposed": "Inactive", "fine": "Active"}
        assert h.alerts_for("compromised:quarantined")[0].fields["source"] == "aws_quarantine"
        [health] = h.alerts_for("compromised:exposed")
        assert health.fields["source"] == "aws_health" and "AWS_RISK_CREDENTIALS_EXPOSED" in health.fields["location"]
        assert h.alerts_for("compromised:fine") == []
        assert h.sample("keywatch_containment_seconds_count") == 2
    finally:
        await stop(h)
