"""Adding an action is one module: `mark_action` (a test's, not shipped) is validated, planned, previewed
by `keywatch policy test` and run by the daemon with no other file touched."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from keywatch.engine import actions
from keywatch.settings.loader import ConfigError, parse
from keywatch.settings.schema import json_schema
from tests.integration.test_policy_harness import cli, start, stop


@pytest.fixture(autouse=True)
def mark_registered():
    """The test's action is registered for these tests only (importing its module registers it)."""
    from tests.integration import mark_action

    actions.register(mark_action.Mark)
    yield
    actions.unregister("mark")


def policy(items: str) -> str:
    return f"""
[[policies]]
name = "mark-invalid"
when = {{ health = "invalid" }}
actions = [{items}]
"""


def test_the_config_schema_and_validation_know_the_new_action(tmp_path: Path) -> None:
    schema = json_schema()
    items = schema["$defs"]["PolicyConfig"]["properties"]["actions"]["items"]["oneOf"]
    assert any(i.get("properties", {}).get("type", {}).get("const") == "mark" for i in items)
    with pytest.raises(ConfigError) as exc:
        parse(policy('{ type = "mark", path = "/tmp/x", colour = "red" }'))
    assert "unknown field; valid fields of mark: type, path, note" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse(policy('{ type = "mark" }'))
    assert "mark.path" in str(exc.value)


async def test_policy_test_and_the_daemon_use_the_new_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marks = tmp_path / "marks.txt"
    h = await start(tmp_path, ["k0", "k1"], {"k1": "invalid"},
                    extra=policy(f'{{ type = "mark", path = "{marks}", note = "dead" }}'))
    try:
        capsys.readouterr()
        await h.cycles(1)
        assert marks.read_text() == "k1 dead\n"
        capsys.readouterr()
        assert await asyncio.to_thread(cli, "policy", "test", "-c", h.config_path, "--json") == 0
        rows = [r for r in json.loads(capsys.readouterr().out) if r["action"] == "mark"]
        assert rows == [{"policy": "mark-invalid", "key": "k1", "action": "mark", "would": "nothing (already done)",
                         "reason": "health invalid (http 401, invalid_api_key)"}]
        events = await asyncio.to_thread(h.daemon.store.events, "k1")
        done = [e for e in events if e.kind == "action_done" and e.data.get("action") == "mark"]
        assert [e.data["result"] for e in done] == ["ok"] and done[0].actor == "mark-invalid"
        await h.cycles(2)
        assert marks.read_text() == "k1 dead\n"  # idempotent: needed() says it is done
    finally:
        await stop(h)
