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
