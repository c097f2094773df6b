"""One config with a key of every provider: `keywatch check` probes them all in one run, each the
cheapest way its provider allows, and prints every health right."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, unique_secret

boto3 = pytest.importorskip("boto3", reason="aws keys need keywatch[aws] (boto3)")


@pytest.fixture(scope="module")
def moto_url():
    # moto's IAM backend is process-wide and reads this once: set it as every AWS test does.
    os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    moto_server = pytest.importorskip("moto.server", reason="the AWS test server needs moto[server]")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_check_probes_every_provider_in_one_run(sim, moto_url: str, tmp_path: Path) -> None:
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                       aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x" * 40)
    user = f"app-{secrets.token_hex(3)}"
    iam.create_user(UserName=user)
    aws = iam.create_access_key(UserName=user)["AccessKey"]

    # (name, provider, simulator behaviour, expected health, extra TOML, secret)
    fleet = [
        ("oa", "openai", "healthy", "healthy", f'base_url = "{sim.url}/openai/v1"', unique_secret()),
        ("oa-compat", "openai_compatible", "server_error", "provider_error",
         f'base_url = "{sim.url}/openai/v1"', unique_secret("sk-")),
        ("ant", "anthropic", "quota_exhausted", "quota_exhausted", f'base_url = "{sim.url}/anthropic"',
         unique_secret("sk-ant-api03-")),
        ("or", "openrouter", "healthy", "healthy", f'base_url = "{sim.url}/openrouter/api/v1"',
         "sk-or-v1-" + secrets.token_hex(32)),
        ("ds", "deepseek", "invalid", "invalid", f'base_url = "{sim.url}/deepseek"', unique_secret("sk-")),
        ("ms", "moonshot", "rate_limited", "rate_limited", f'base_url = "{sim.url}/moonshot/v1"',
         unique_secret("sk-")),
        ("az", "azure_openai", "healthy", "healthy", f'endpoint = "{sim.url}/azure/contoso"', secrets.token_hex(16)),
        ("br", "aws_bedrock", "invalid", "invalid", f'base_url = "{sim.url}/aws/bedrock"',
         "ABSK" + secrets.token_urlsafe(60)),
        ("iam", "aws_iam", None, "healthy",
         f'access_key_id = "{aws["AccessKeyId"]}"\nendpoint_url = "{moto_url}"', aws["SecretAccessKey"]),
    ]
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    lines = [f'[daemon]\ndatabase = "sqlite:///{tmp_path / "k.db"}"\n[probe]\ntimeout = "5s"\n']
    for name, provider, behaviour, _, extra, secret in fleet:
        if behaviour:
            sim.set_key(secret, provider=provider if provider != "openai_compatible" else "openai",
                        behaviour=behaviour)
        env[f"KW_{name.upper().replace('-', '_')}"] = secret
        lines.append(f'[[keys]]\nname = "{name}"\nprovider = "{provider}"\n'
                     f'secret = "env:KW_{name.upper().replace("-", "_")}"\n{extra}\n')
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text("\n".join(lines))
    proc = subprocess.run([sys.executable, "-m", "keywatch", "check", "-c", str(cfg), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    got = {row["key"]: (row["provider"], row["health"]) for row in json.loads(proc.stdout)}
    assert got == {name: (provider, health) for name, provider, _, health, _, _ in fleet}
    for *_, secret in fleet:
        assert secret not in proc.stdout + proc.stderr


def test_quarantined_aws_key_is_flagged_in_status_and_metrics(moto_url: str, tmp_path: Path) -> None:
    """The AWS quarantine policy is a compromise signal beside health: the daemon stores it, `status`
    shows it, and /metrics carries keywatch_key_compromised."""
    iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1",
                       aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x" * 40)
    admin_user, user = f"admin-{secrets.token_hex(3)}", f"leaky-{secrets.token_hex(3)}"
    iam.create_user(UserName=admin_user)
    admin = iam.create_access_key(UserName=admin_user)["AccessKey"]
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.attach_user_policy(UserName=user, PolicyArn="arn:aws:iam::aws:policy/AWSCompromisedKeyQuarantineV3")
    port = free_port()
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f"""
[daemon]
database = "sqlite:///{tmp_path / "k.db"}"
listen = "127.0.0.1:{port}"
[probe]
interval = "1h"
[safety]
dry_run = true
[[accounts]]
name = "aws-main"
provider = "aws_iam"
access_key_id = "{admin["AccessKeyId"]}"
admin_secret = "env:KW_ADMIN"
endpoint_url = "{moto_url}"
[[keys]]
name = "leaky"
provider = "aws_iam"
access_key_id = "{key["AccessKeyId"]}"
secret = "env:KW_KEY"
endpoint_url = "{moto_url}"
account = "aws-main"
""")
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env.update(KW_ADMIN=admin["SecretAccessKey"], KW_KEY=key["SecretAccessKey"])

    import time
    import urllib.request

    daemon = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, metrics = time.monotonic() + 30, ""
        while time.monotonic() < deadline and 'keywatch_key_last_probe_timestamp_seconds{key="leaky"' not in metrics:
            time.sleep(0.2)
            try:
                metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                continue
        assert 'keywatch_key_compromised{key="leaky",provider="aws_iam"} 1.0' in metrics
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0
    proc = subprocess.run([sys.executable, "-m", "keywatch", "status", "-c", str(cfg), "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    [row] = json.loads(proc.stdout)
    assert row["compromised"] is True and "AWSCompromisedKeyQuarantineV3" in row["compromise_reason"]
    assert proc.returncode == 1  # a compromised key needs attention
    table = subprocess.run([sys.executable, "-m", "keywatch", "status", "-c", str(cfg)],
                           capture_output=True, text=True, env=env, timeout=60).stdout
    assert "COMPROMISED" in table
    assert key["SecretAccessKey"] not in proc.stdout + table
