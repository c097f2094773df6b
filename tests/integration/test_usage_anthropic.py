"""Anthropic usage and cost reports through a real daemon and the simulator: the cost amount is a decimal
string in cents, costs stay on their workspace, tokens go to keys, every page is followed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tests.integration.usage_harness import cli, env_secret, start, stop

NOW = datetime(2026, 5, 31, 22, 15, tzinfo=UTC)
ADMIN = "sk-ant-admin01-usage" + "a" * 30 + "ADMN"
KEY_R = "sk-ant-api03-usageR" + "r" * 40 + "KEYR"
KEY_S = "sk-ant-api03-usageS" + "s" * 40 + "KEYS"


def iso(hours_ago: float) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


BODY = f"""
[[accounts]]
name = "anthropic-org"
provider = "anthropic"
admin_secret = "{env_secret('KW_USAGE_ANT_ADMIN', ADMIN)}"
base_url = "{{sim}}/anthropic"

[[keys]]
name = "research"
provider = "anthropic"
secret = "{env_secret('KW_USAGE_ANT_R', KEY_R)}"
base_url = "{{sim}}/anthropic"
account = "anthropic-org"
provider_key_id = "apikey_R"

[[keys]]
name = "support"
provider = "anthropic"
secret = "{env_secret('KW_USAGE_ANT_S', KEY_S)}"
base_url = "{{sim}}/anthropic"
account = "anthropic-org"

[[budgets]]
name = "research-ws"
scope = "workspace:wrk_research"
period = "monthly"
usd = "2"
"""

USAGE = [
    {"at": iso(3), "api_key_id": "apikey_R", "workspace_id": "wrk_research", "model": "claude-sonnet-4-5",
     "uncached_input_tokens": 1200, "cache_read_input_tokens": 300, "output_tokens": 450},
    {"at": iso(30), "api_key_id": "apikey_R", "workspace_id": "wrk_research", "model": "claude-haiku-4-5",
     "uncached_input_tokens": 10, "output_tokens": 5},
    {"at": iso(2), "api_key_id": "apikey_S", "workspace_id": None, "model": "claude-haiku-4-5",
     "uncached_input_tokens": 77, "output_tokens": 33},
]
COSTS = [
    {"at": iso(3), "workspace_id": "wrk_research", "description": "Claude Sonnet 4.5 input", "amount": "123.45"},
    {"at": iso(30), "workspace_id": "wrk_research", "description": "Claude Sonnet 4.5 input", "amount": "0.005"},
    {"at": iso(50), "workspace_id": "wrk_research", "description": "Claude Haiku 4.5 output", "amount": "10"},
    {"at": iso(2), "workspace_id": None, "description": "Claude Haiku 4.5 input", "amount": "7.5"},
]


async def _start(tmp_path: Path):
    h = await start(tmp_path, BODY)
    h.sim.set_key(ADMIN, "anthropic", "admin")
    h.sim.set_key(KEY_R, "anthropic", "healthy", key_id="apikey_R", name="research", workspace_id="wrk_research")
    h.sim.set_key(KEY_S, "anthropic", "healthy", key_id="apikey_S", name="support")
    h.fixtures("anthropic", usage=USAGE, costs=COSTS, page_size=1)
    return h


def report(h, by: str, capsys) -> dict[str, dict]:
    capsys.readouterr()
    assert cli("usage", "-c", h.config, "--since", "2026-05-01", "--json", "--by", by) == 0
    return {r["group"]: r for r in json.loads(capsys.readouterr().out)["rows"]}


async def test_cents_strings_become_exact_dollars_on_their_workspace(tmp_path: Path, capsys) -> None:
    h = await _start(tmp_path)
    try:
        out = await h.pull(NOW)
        assert out.results["anthropic-org"].errors == []
        by_scope = report(h, "scope", capsys)
        # "123.45" + "0.005" + "10" cents = $1.33455 ; "7.5" cents = $0.075
        assert Decimal(by_scope["workspace:wrk_research"]["cost"]) == Decimal("1.33455")
        assert Decimal(by_scope["workspace:default"]["cost"]) == Decimal("0.075")
        assert by_scope["key:research"]["input_tokens"] == 1510 and by_scope["key:research"]["output_tokens"] == 455
        assert by_scope["key:research"]["cached_tokens"] == 300
        assert by_scope["key:support"]["input_tokens"] == 77  # found by its partial key hint
        assert Decimal(by_scope["key:research"]["cost"]) == 0  # Anthropic reports no cost per key
        assert h.sample("keywatch_budget_used_ratio", {"budget": "research-ws"}) == float(Decimal("1.33455") / 2)
        # overlapping re-pull: the same figures, not twice
        await h.pull(NOW + timedelta(minutes=40))
        again = report(h, "scope", capsys)
        assert Decimal(again["workspace:wrk_research"]["cost"]) == Decimal("1.33455")
        assert again["key:research"]["input_tokens"] == 1510
    finally:
        await stop(h)


async def test_a_failing_report_keeps_the_workspace_figures(tmp_path: Path, capsys) -> None:
    h = await _start(tmp_path)
    try:
        await h.pull(NOW)
        h.fixtures("anthropic", usage_status=500)
        out = await h.pull(NOW + timedelta(hours=1))
        assert len(out.results["anthropic-org"].errors) == 2
        assert h.sample("keywatch_usage_stale", {"account": "anthropic-org"}) == 1
        assert Decimal(report(h, "scope", capsys)["workspace:wrk_research"]["cost"]) == Decimal("1.33455")
        assert h.sample("keywatch_budget_used_ratio", {"budget": "research-ws"}) == float(Decimal("1.33455") / 2)
    finally:
        await stop(h)
