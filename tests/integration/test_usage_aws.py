"""AWS Bedrock usage against moto's server: tokens from CloudWatch AWS/Bedrock (single-dimension ModelId series
only) and money from Cost Explorer (Amazon Bedrock and Marketplace model names), with results injected as
test-harness.md shows."""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.integration.usage_harness import cli, env_secret, start, stop

pytest.importorskip("moto.server", reason="moto[server] is needed to run CloudWatch and Cost Explorer locally")
boto3 = pytest.importorskip("boto3", reason="boto3 is needed for AWS usage")

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)  # CloudWatch keeps only recent data


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server._port}"
    finally:
        server.stop()


def _post(url: str, payload: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status in (200, 201)


def _cost(day: datetime, groups: dict[str, str]) -> dict:
    return {
        "TimePeriod": {"Start": day.strftime("%Y-%m-%d"), "End": (day + timedelta(days=1)).strftime("%Y-%m-%d")},
        "Total": {}, "Estimated": False,
        "Groups": [{"Keys": [k], "Metrics": {"UnblendedCost": {"Amount": v, "Unit": "USD"}}}
                   for k, v in groups.items()],
    }


async def test_bedrock_tokens_and_costs_from_cloudwatch_and_cost_explorer(moto_url: str, tmp_path: Path,
                                                                          capsys) -> None:
    cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=moto_url, aws_access_key_id="AKIATEST",
                      aws_secret_access_key="secret-test")
    hour = NOW.replace(minute=0) - timedelta(hours=1)
    model = "anthropic.claude-3-haiku-20240307-v1:0"
    for name, value in (("InputTokenCount", 1500), ("OutputTokenCount", 250), ("Invocations", 4)):
        cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "ModelId", "Value": model}], "Timestamp": hour + timedelta(
                minutes=5), "Value": value, "Unit": "Count"},
        ])
    # A model seen only in a series with more dimensions repeats tokens counted elsewhere: not counted.
    # (moto matches dimensions as a subset, real CloudWatch exactly, so the repeat is shown on another model.)
    cw.put_metric_data(Namespace="AWS/Bedrock", MetricData=[
        {"MetricName": "InputTokenCount", "Dimensions": [{"Name": "ModelId", "Value": "amazon.nova-lite-v1:0"},
                                                         {"Name": "Region", "Value": "us-east-1"}],
         "Timestamp": hour + timedelta(minutes=5), "Value": 900, "Unit": "Count"},
    ])
    today = NOW.replace(hour=0, minute=0)
    results = [_cost(today - timedelta(days=1), {"Amazon Bedrock": "1.1", "Amazon EC2": "99",
                                                 "Claude 3 Haiku (Amazon Bedrock Edition)": "0.2"}),
               _cost(today, {"Amazon Bedrock": "0.000001"})]
    _post(f"{moto_url}/moto-api/static/ce/cost-and-usage-results", {"results": [{"ResultsByTime": results}]})
    body = f"""
[[accounts]]
name = "aws-prod"
provider = "aws_bedrock"
access_key_id = "AKIATEST"
admin_secret = "{env_secret('KW_USAGE_AWS_SECRET', 'secret-test')}"
endpoint_url = "{moto_url}"
region = "us-east-1"
"""
    h = await start(tmp_path, body)
    try:
        out = await h.pull(NOW)
        assert out.results["aws-prod"].errors == []
        capsys.readouterr()
        since = (today - timedelta(days=3)).strftime("%Y-%m-%d")
        assert cli("usage", "-c", h.config, "--since", since, "--json", "--by", "scope") == 0
        rows = {r["group"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
        acct = rows["account:aws-prod"]
        assert Decimal(acct["cost"]) == Decimal("1.300001")  # EC2 is not Bedrock
        assert acct["input_tokens"] == 1500 and acct["output_tokens"] == 250 and acct["requests"] == 4
        assert h.sample("keywatch_usage_stale", {"account": "aws-prod"}) == 0
    finally:
        await stop(h)
