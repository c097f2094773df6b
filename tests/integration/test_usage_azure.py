"""Azure OpenAI usage through a real daemon and the simulator's ARM: tokens per deployment from Azure Monitor,
daily money from Cost Management (exact, every page, only this account's resource), attributed to the account,
idempotent re-pulls, and outages that keep the last figures. The ARM token comes from the real
DefaultAzureCredential through a managed identity endpoint the simulator plays."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from keywatch.sim.routes import azure as sim_azure
from keywatch.sim.server import Simulator
from tests.integration.usage_harness import cli, start, stop

pytest.importorskip("azure.identity", reason="needs keywatch[azure] (azure-identity) for the ARM token")

NOW = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)
ACCOUNT = "aoai-prod"


def at(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).isoformat()


BODY = f"""
[[accounts]]
name = "azure-main"
provider = "azure_openai"
base_url = "{{sim}}/azure/arm"
subscription_id = "sub-1"
resource_group = "rg-1"
account_name = "{ACCOUNT}"

[[keys]]
name = "chat-app"
provider = "azure_openai"
secret = "azure:key1"
account = "azure-main"
endpoint = "{{sim}}/azure/{ACCOUNT}"
"""

METRICS = [
    {"at": at(3), "account": ACCOUNT, "deployment": "chat-prod", "model": "gpt-4o", "prompt_tokens": 1000,
     "generated_tokens": 200, "requests": 3},
    {"at": at(3.5), "account": ACCOUNT, "deployment": "chat-prod", "model": "gpt-4o", "prompt_tokens": 20,
     "generated_tokens": 5, "requests": 1},
    {"at": at(1), "account": ACCOUNT, "deployment": "chat-prod", "model": "gpt-4o", "prompt_tokens": 7,
     "generated_tokens": 3, "requests": 1},
    {"at": at(2), "account": ACCOUNT, "deployment": "embed", "model": "text-embedding-3-small",
     "prompt_tokens": 500, "generated_tokens": 0, "requests": 2},
    {"at": at(2), "account": "aoai-other", "deployment": "chat-prod", "model": "gpt-4o", "prompt_tokens": 99999,
     "generated_tokens": 99999, "requests": 9},
]
# Amounts that floats get wrong when summed: 0.1 + 0.2 + 0.333333 = 0.633333.
COSTS = [
    {"at": "2026-03-16", "account": ACCOUNT, "meter_subcategory": "gpt-4o", "cost": "0.1", "currency": "USD"},
    {"at": "2026-03-17", "account": ACCOUNT, "meter_subcategory": "gpt-4o", "cost": "0.2", "currency": "USD"},
    {"at": "2026-03-18", "account": ACCOUNT, "meter_subcategory": "gpt-4o", "cost": "0.333333", "currency": "USD"},
    {"at": "2026-03-18", "account": ACCOUNT, "meter_subcategory": "text-embedding-3-small", "cost": "0.01",
     "currency": "USD"},
    {"at": "2026-03-18", "account": "aoai-other", "meter_subcategory": "gpt-4o", "cost": "50", "currency": "USD"},
]


@pytest.fixture
def managed_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the managed identity (App Service flavour, pointed at the simulator) may answer for Azure."""
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE",
                 "MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_HEADER", "sim-identity-header")


async def _start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fixtures):
    sim = Simulator()
    await sim.start()
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{sim.url}/azure/identity/token")
    h = await start(tmp_path, BODY, sim)
    for name in (ACCOUNT, "aoai-other"):
        sim_azure.add_account(sim.state, name, endpoint=f"{sim.url}/azure/{name}")
    h.fixtures("azure_openai", metrics=list(METRICS), costs=list(COSTS), **fixtures)
    return h


def usage_json(h, *extra: str, capsys) -> dict:
    capsys.readouterr()
    assert cli("usage", "-c", h.config, "--since", "2026-03-01", "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_group(report: dict) -> dict[str, dict]:
    return {r["group"]: r for r in report["rows"]}


@pytest.mark.usefixtures("managed_identity")
async def test_tokens_per_deployment_and_daily_cost_exact_and_attributed_to_the_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    h = await _start(tmp_path, monkeypatch, cost_column="PreTaxCost", cost_page_size=2)
    try:
        out = await h.pull(NOW)
        assert out.results["azure-main"].errors == []
        pages = [n for (p, route), n in h.sim.state.requests.items() if route.endswith("CostManagement/query")]
        assert h.sim.state.requests.get(("azure_openai", "/azure/identity/token"))  # the real credential chain
        assert sum(pages) == 2  # 4 rows of this account, 2 per page: the nextLink was followed
        by_scope = rows_by_group(usage_json(h, "--by", "scope", capsys=capsys))
        acct = by_scope["account:azure-main"]
        assert Decimal(acct["cost"]) == Decimal("0.643333")  # the other account's $50 is not ours
        assert acct["input_tokens"] == 1527 and acct["output_tokens"] == 208 and acct["requests"] == 7
        by_model = rows_by_group(usage_json(h, "--by", "model", capsys=capsys))
        assert by_model["chat-prod"]["input_tokens"] == 1027 and by_model["chat-prod"]["output_tokens"] == 208
        assert by_model["embed"]["input_tokens"] == 500
        by_key = rows_by_group(usage_json(h, "--by", "key", capsys=capsys))
        assert "chat-app" not in by_key  # Azure cannot tell the account's two keys apart: nothing is guessed
        assert h.sample("keywatch_usage_stale", {"account": "azure-main"}) == 0
        assert h.sample("keywatch_usage_last_success_timestamp_seconds", {"account": "azure-main"}) \
            == NOW.timestamp()
    finally:
        await stop(h)


@pytest.mark.usefixtures("managed_identity")
async def test_repulling_an_overlapping_window_replaces_never_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    h = await _start(tmp_path, monkeypatch)  # the cost column under its other name, "Cost"
    try:
        await h.pull(NOW)
        await h.pull(NOW)
        await h.pull(NOW + timedelta(hours=1))  # overlaps the last 2 days again
        acct = rows_by_group(usage_json(h, "--by", "scope", capsys=capsys))["account:azure-main"]
        assert Decimal(acct["cost"]) == Decimal("0.643333")
        assert acct["input_tokens"] == 1527
        # Cost Management revises today's figure: the new one replaces the old
        revised = [*COSTS[:2], {**COSTS[2], "cost": "0.45"}, *COSTS[3:]]
        h.fixtures("azure_openai", costs=revised)
        await h.pull(NOW + timedelta(hours=1))
        acct = rows_by_group(usage_json(h, "--by", "scope", capsys=capsys))["account:azure-main"]
        assert Decimal(acct["cost"]) == Decimal("0.76")
    finally:
        await stop(h)


@pytest.mark.usefixtures("managed_identity")
@pytest.mark.parametrize("outage", [{"monitor_status": 500}, {"cost_status": 429}])
async def test_a_failing_monitor_or_cost_api_keeps_the_last_figures_and_marks_them_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, outage: dict
) -> None:
    h = await _start(tmp_path, monkeypatch)
    try:
        await h.pull(NOW)
        h.fixtures("azure_openai", metrics=[], costs=[], **outage)  # whichever answers would now say zero
        out = await h.pull(NOW + timedelta(hours=1))
        errors = out.results["azure-main"].errors
        assert len(errors) == 1 and ("Monitor" in errors[0] if "monitor_status" in outage else "Cost" in errors[0])
        assert h.sample("keywatch_usage_stale", {"account": "azure-main"}) == 1
        assert h.sample("keywatch_usage_last_success_timestamp_seconds", {"account": "azure-main"}) \
            == NOW.timestamp()
        acct = rows_by_group(usage_json(h, "--by", "scope", capsys=capsys))["account:azure-main"]
        if "monitor_status" in outage:
            assert acct["input_tokens"] == 1527  # the failed part keeps its figures
        else:
            assert Decimal(acct["cost"]) == Decimal("0.643333")
        h.fixtures("azure_openai", monitor_status=None, cost_status=None)
        await h.pull(NOW + timedelta(hours=2))
        assert h.sample("keywatch_usage_stale", {"account": "azure-main"}) == 0
    finally:
        await stop(h)


async def test_no_azure_credential_marks_the_source_stale_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = Simulator()
    await sim.start()
    for name in ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    body = BODY.replace('account_name = "aoai-prod"', 'account_name = "aoai-prod"\ncredential = "client_secret"')
    h = await start(tmp_path, body, sim)
    try:
        out = await h.pull(NOW)
        errors = out.results["azure-main"].errors
        assert len(errors) == 1 and "tenant_id, client_id and client_secret" in errors[0]
        assert h.sample("keywatch_usage_stale", {"account": "azure-main"}) == 1
    finally:
        await stop(h)
