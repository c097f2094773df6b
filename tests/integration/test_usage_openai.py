"""OpenAI usage and costs through a real daemon and the simulator's Admin API: exact money, all pages,
attribution to managed keys, idempotent re-pulls, failures that keep the last figures, budgets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.usage_harness import cli, env_secret, start, stop

NOW = datetime(2026, 3, 18, 15, 30, tzinfo=UTC)
ADMIN = "sk-admin-usage" + "a" * 30 + "ADMN"
KEY_A = "sk-proj-usageA" + "b" * 30 + "KEYA"
KEY_B = "sk-proj-usageB" + "c" * 30 + "KEYB"


def ts(hours_ago: float) -> int:
    return int((NOW - timedelta(hours=hours_ago)).timestamp())


def body(budgets: str = "") -> str:
    return f"""
[[accounts]]
name = "openai-org"
provider = "openai"
admin_secret = "{env_secret('KW_USAGE_OPENAI_ADMIN', ADMIN)}"
base_url = "{{sim}}/openai/v1"

[[keys]]
name = "search-a"
provider = "openai"
secret = "{env_secret('KW_USAGE_OPENAI_A', KEY_A)}"
base_url = "{{sim}}/openai/v1"
account = "openai-org"
provider_key_id = "key_AAA"
project = "proj_1"
labels = {{ team = "search" }}

[[keys]]
name = "ads-b"
provider = "openai"
secret = "{env_secret('KW_USAGE_OPENAI_B', KEY_B)}"
base_url = "{{sim}}/openai/v1"
account = "openai-org"
labels = {{ team = "ads" }}
{budgets}
"""


USAGE = [
    # search-a, known by provider_key_id; 3 hours, two models
    {"at": ts(3), "api_key_id": "key_AAA", "project_id": "proj_1", "model": "gpt-4o", "input_tokens": 1000,
     "output_tokens": 200, "input_cached_tokens": 100, "num_model_requests": 3},
    {"at": ts(2), "api_key_id": "key_AAA", "project_id": "proj_1", "model": "gpt-4o-mini", "input_tokens": 500,
     "output_tokens": 50, "num_model_requests": 1},
    {"at": ts(1), "api_key_id": "key_AAA", "project_id": "proj_1", "model": "gpt-4o", "input_tokens": 7,
     "output_tokens": 3, "num_model_requests": 1},
    # ads-b: found by its redacted value through the Admin API (no provider_key_id configured)
    {"at": ts(2), "api_key_id": "key_BBB", "project_id": "proj_2", "model": "gpt-4o", "input_tokens": 40,
     "output_tokens": 60, "num_model_requests": 2},
    # a key keywatch does not manage, and usage without a key (e.g. the playground)
    {"at": ts(5), "api_key_id": "key_ZZZ", "project_id": "proj_2", "model": "gpt-4o", "input_tokens": 9,
     "output_tokens": 1, "num_model_requests": 1},
    {"at": ts(4), "api_key_id": None, "project_id": "proj_2", "model": "gpt-4o", "input_tokens": 11,
     "output_tokens": 2, "num_model_requests": 1},
]
DAY = 86400
COSTS = [
    # amounts that floats get wrong when summed: 0.1 + 0.2 + 0.333333 = 0.633333
    {"at": ts(15.5 + 48), "api_key_id": "key_AAA", "project_id": "proj_1", "line_item": "gpt-4o, input",
     "amount": "0.1"},
    {"at": ts(15.5 + 24), "api_key_id": "key_AAA", "project_id": "proj_1", "line_item": "gpt-4o, input",
     "amount": "0.2"},
    {"at": ts(1), "api_key_id": "key_AAA", "project_id": "proj_1", "line_item": "gpt-4o, output",
     "amount": "0.333333"},
    {"at": ts(2), "api_key_id": "key_BBB", "project_id": "proj_2", "line_item": "gpt-4o, input",
     "amount": "1.17"},
    {"at": ts(2), "api_key_id": None, "project_id": "proj_2", "line_item": "fine-tune training",
     "amount": "2.05"},
]


async def _start(tmp_path: Path, budgets: str = "", page_size: int | None = 2):
    h = await start(tmp_path, body(budgets))
    h.sim.set_key(ADMIN, "openai", "admin")
    h.sim.set_key(KEY_A, "openai", "healthy", project_id="proj_1", key_id="key_AAA", name="search-a")
    h.sim.set_key(KEY_B, "openai", "healthy", project_id="proj_2", key_id="key_BBB", name="ads-b")
    h.fixtures("openai", usage=list(USAGE), costs=list(COSTS), page_size=page_size, spend_limit_cents=50000)
    return h


def usage_json(h, *extra: str, capsys) -> dict:
    capsys.readouterr()
    assert cli("usage", "-c", h.config, "--since", "2026-02-01", "--json", *extra) == 0
    return json.loads(capsys.readouterr().out)


def rows_by_group(report: dict) -> dict[str, dict]:
    return {r["group"]: r for r in report["rows"]}


async def test_costs_exact_to_the_cent_across_pages_and_attributed_to_keys(tmp_path: Path, capsys) -> None:
    h = await _start(tmp_path)
    try:
        out = await h.pull(NOW)
        assert out.results["openai-org"].errors == []
        pages = [n for (p, route), n in h.sim.state.requests.items() if route.endswith("/usage/completions")]
        assert sum(pages) >= 12  # 31 days of hourly buckets, 2 per page here: every page was followed
        by_key = rows_by_group(usage_json(h, "--by", "key", capsys=capsys))
        assert Decimal(by_key["search-a"]["cost"]) == Decimal("0.633333")
        assert Decimal(by_key["ads-b"]["cost"]) == Decimal("1.17")
        assert Decimal(by_key["(project:proj_2)"]["cost"]) == Decimal("2.05")
        assert by_key["search-a"]["input_tokens"] == 1507 and by_key["search-a"]["output_tokens"] == 253
        assert by_key["search-a"]["requests"] == 5 and by_key["search-a"]["cached_tokens"] == 100
        assert by_key["ads-b"]["input_tokens"] == 40
        assert by_key["(apikey:key_ZZZ)"]["input_tokens"] == 9  # not guessed onto a managed key
        assert by_key["(project:proj_2)"]["input_tokens"] == 11
        by_team = rows_by_group(usage_json(h, "--by", "label:team", capsys=capsys))
        assert Decimal(by_team["search"]["cost"]) == Decimal("0.633333")
        by_model = rows_by_group(usage_json(h, "--by", "model", capsys=capsys))
        assert by_model["gpt-4o-mini"]["input_tokens"] == 500
        assert h.sample("keywatch_key_spend_usd", {"key": "search-a", "provider": "openai", "period": "month"}) \
            == pytest.approx(0.633333)
        assert h.sample("keywatch_key_spend_usd", {"key": "search-a", "provider": "openai", "period": "day"}) \
            == pytest.approx(0.333333)
        assert h.sample("keywatch_key_tokens", {"key": "search-a", "provider": "openai",
                                                      "direction": "output"}) == 253
        assert h.sample("keywatch_usage_stale", {"account": "openai-org"}) == 0
        assert h.sample("keywatch_usage_last_success_timestamp_seconds", {"account": "openai-org"}) \
            == NOW.timestamp()
        capsys.readouterr()
        assert cli("usage", "-c", h.config, "--since", "2026-02-01", "--csv", "--by", "provider") == 0
        csv_out = capsys.readouterr().out
        assert "openai,USD,1567,316,100,9,3.853333" in csv_out
        assert ADMIN not in csv_out and KEY_A not in csv_out
    finally:
        await stop(h)


async def test_repulling_an_overlapping_window_replaces_never_adds(tmp_path: Path, capsys) -> None:
    h = await _start(tmp_path, page_size=None)
    try:
        await h.pull(NOW)
        await h.pull(NOW)
        await h.pull(NOW + timedelta(hours=1))  # overlaps the last 2 days again
        by_key = rows_by_group(usage_json(h, capsys=capsys))
        assert Decimal(by_key["search-a"]["cost"]) == Decimal("0.633333")
        assert by_key["search-a"]["input_tokens"] == 1507
        # the provider revises today's figure: the new one replaces the old
        revised = [*COSTS[:2], {**COSTS[2], "amount": "0.45"}, *COSTS[3:]]
        h.fixtures("openai", costs=revised)
        await h.pull(NOW + timedelta(hours=1))
        by_key = rows_by_group(usage_json(h, capsys=capsys))
        assert Decimal(by_key["search-a"]["cost"]) == Decimal("0.75")
    finally:
        await stop(h)


async def test_a_failing_usage_api_keeps_the_last_figures_and_marks_them_stale(tmp_path: Path, capsys) -> None:
    h = await _start(tmp_path)
    try:
        await h.pull(NOW)
        spent = h.sample("keywatch_key_spend_usd", {"key": "search-a", "provider": "openai", "period": "month"})
        h.fixtures("openai", usage_status=500)
        out = await h.pull(NOW + timedelta(hours=1))
        assert out.results["openai-org"].errors
        assert h.sample("keywatch_usage_stale", {"account": "openai-org"}) == 1
        assert h.sample("keywatch_key_spend_usd", {"key": "search-a", "provider": "openai", "period": "month"}) \
            == spent
        assert h.sample("keywatch_usage_last_success_timestamp_seconds", {"account": "openai-org"}) \
            == NOW.timestamp()
        assert Decimal(rows_by_group(usage_json(h, capsys=capsys))["search-a"]["cost"]) == Decimal("0.633333")
        h.fixtures("openai", usage_status=None)
        await h.pull(NOW + timedelta(hours=2))
        assert h.sample("keywatch_usage_stale", {"account": "openai-org"}) == 0
    finally:
        await stop(h)


async def test_spent_budget_marks_its_keys_and_alerts_once(tmp_path: Path) -> None:
    budgets = """
[[budgets]]
name = "team-search"
labels = { team = "search" }
period = "monthly"
usd = "0.60"

[[budgets]]
name = "ads-tokens"
key = "ads-b"
period = "daily"
tokens = 1000
"""
    h = await _start(tmp_path, budgets)
    try:
        await h.pull(NOW)
        assert "budget_exhausted" in h.daemon.runtime.board.of("search-a")
        assert "budget_exhausted" not in h.daemon.runtime.board.of("ads-b")
        alerts = h.alerts_for("budget:team-search")
        assert len(alerts) == 1 and alerts[0].firing and alerts[0].severity == "critical"
        assert "$0.63 of $0.60" in alerts[0].title
        assert h.sample("keywatch_budget_used_ratio", {"budget": "team-search"}) == pytest.approx(0.633333 / 0.6)
        assert h.sample("keywatch_budget_limit_usd", {"budget": "team-search"}) == 0.6
        assert h.sample("keywatch_budget_used_ratio", {"budget": "ads-tokens"}) == pytest.approx(0.1)
        await h.pull(NOW + timedelta(hours=1))
        assert len(h.alerts_for("budget:team-search")) == 1  # announced once per period
        # a new month: the budget starts again, the key is released and the alert resolved
        await h.pull(datetime(2026, 4, 1, 0, 30, tzinfo=UTC))
        assert "budget_exhausted" not in h.daemon.runtime.board.of("search-a")
        assert [a.firing for a in h.alerts_for("budget:team-search")] == [True, False]
    finally:
        await stop(h)


async def test_the_first_probe_cycle_schedules_the_hourly_usage_job(tmp_path: Path) -> None:
    import asyncio

    h = await _start(tmp_path, page_size=None)
    try:
        assert h.daemon.scheduler.get_job("usage") is None
        await h.daemon.cycle()
        job = h.daemon.scheduler.get_job("usage")
        assert job is not None and job.trigger.interval == timedelta(hours=1)
        for _ in range(200):  # the job starts at once; wait for its first pull to land
            if h.sample("keywatch_usage_stale", {"account": "openai-org"}) is not None:
                break
            await asyncio.sleep(0.05)
        assert h.sample("keywatch_usage_stale", {"account": "openai-org"}) == 0
    finally:
        await stop(h)
