"""Keys that report on themselves: OpenRouter's per-key spend (GET /key) and DeepSeek/Moonshot balances,
whose decrease is spend and whose increase is a top-up, never negative spend."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from tests.integration.usage_harness import cli, env_secret, start, stop

NOW = datetime(2026, 7, 14, 9, 5, tzinfo=UTC)
OR_KEY = "sk-or-v1-usage" + "0" * 50 + "ORK1"
DS_KEY = "sk-usageds" + "d" * 30 + "DSK1"
MS_KEY = "sk-usagems" + "m" * 30 + "MSK1"

BODY = f"""
[[keys]]
name = "router"
provider = "openrouter"
secret = "{env_secret('KW_USAGE_OR', OR_KEY)}"
base_url = "{{sim}}/openrouter/api/v1"

[[keys]]
name = "ds-main"
provider = "deepseek"
secret = "{env_secret('KW_USAGE_DS', DS_KEY)}"
base_url = "{{sim}}/deepseek"

[[keys]]
name = "kimi"
provider = "moonshot"
secret = "{env_secret('KW_USAGE_MS', MS_KEY)}"
base_url = "{{sim}}/moonshot/v1"

[[budgets]]
name = "router-daily"
key = "router"
period = "daily"
usd = "4"
"""


def report(h, capsys) -> dict[tuple[str, str], dict]:
    capsys.readouterr()
    assert cli("usage", "-c", h.config, "--since", "2026-07-01", "--json", "--by", "scope") == 0
    return {(r["group"], r["currency"]): r for r in json.loads(capsys.readouterr().out)["rows"]}


async def test_openrouter_daily_spend_is_replaced_each_pull_and_drives_budgets(tmp_path: Path, capsys) -> None:
    h = await start(tmp_path, BODY)
    try:
        h.sim.set_key(OR_KEY, "openrouter", usage=3.21, limit=50)
        h.sim.set_key(DS_KEY, "deepseek")
        h.sim.set_key(MS_KEY, "moonshot")
        await h.pull(NOW)
        assert Decimal(report(h, capsys)[("key:router", "USD")]["cost"]) == Decimal("3.21")
        assert h.sample("keywatch_key_spend_usd", {"key": "router", "provider": "openrouter", "period": "day"}) \
            == 3.21
        assert "budget_exhausted" not in h.daemon.runtime.board.of("router")
        h.sim.set_key(OR_KEY, "openrouter", usage=4.5, limit=50)
        await h.pull(NOW + timedelta(hours=1))
        assert Decimal(report(h, capsys)[("key:router", "USD")]["cost"]) == Decimal("4.5")  # replaced, not added
        assert h.daemon.runtime.board.of("router") == {"budget_exhausted"}
        assert h.alerts_for("budget:router-daily")[-1].severity == "critical"
    finally:
        await stop(h)


async def test_balance_decreases_are_spend_and_top_ups_are_not_negative(tmp_path: Path, capsys) -> None:
    h = await start(tmp_path, BODY)
    try:
        h.sim.set_key(OR_KEY, "openrouter", usage=0)
        steps = [("110.00", 49.5), ("104.50", 48.25), ("200.00", 48.25), ("198.75", 47.0)]
        for i, (ds, ms) in enumerate(steps):
            h.sim.set_key(DS_KEY, "deepseek", total_balance=ds)
            h.sim.set_key(MS_KEY, "moonshot", available_balance=ms)
            await h.pull(NOW + timedelta(hours=i))
        rows = report(h, capsys)
        assert Decimal(rows[("account:ds-main", "CNY")]["cost"]) == Decimal("6.75")  # 5.50 + 1.25; +95.50 top-up
        assert Decimal(rows[("account:kimi", "USD")]["cost"]) == Decimal("2.5")
        assert h.sample("keywatch_account_balance", {"account": "ds-main", "provider": "deepseek",
                                                     "currency": "CNY"}) == 198.75
        assert h.sample("keywatch_account_balance", {"account": "kimi", "provider": "moonshot",
                                                     "currency": "USD"}) == 47.0
        # the same balance seen again adds nothing
        await h.pull(NOW + timedelta(hours=4))
        assert Decimal(report(h, capsys)[("account:ds-main", "CNY")]["cost"]) == Decimal("6.75")
        # an unreadable balance keeps the last figures and marks the source stale
        h.sim.set_key(DS_KEY, "deepseek", "bad_body")
        await h.pull(NOW + timedelta(hours=5))
        assert h.sample("keywatch_usage_stale", {"account": "ds-main"}) == 1
        assert Decimal(report(h, capsys)[("account:ds-main", "CNY")]["cost"]) == Decimal("6.75")
    finally:
        await stop(h)
