"""Disable at the provider where it is reversible (Anthropic `inactive` in the simulator), and what happens
when the provider call fails: keywatch still pulls the key, says the provider side did not change, alerts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from keywatch.sim import Simulator
from tests.integration.test_policy_harness import cli, start, stop

SECRET = "sk-ant-api03-P0l1cyT3stK3yAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMn-aaAA"
ADMIN = "sk-ant-admin01-P0l1cyAdm1nAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOp-ADMN"


def config(tmp: Path, url: str, admin_env: str) -> Path:
    os.environ["KW_POL_ANT_KEY"] = SECRET
    path = tmp / "keywatch.toml"
    path.write_text(f"""
[daemon]
database = "sqlite:///{tmp / "kw.db"}"
listen = "127.0.0.1:0"
[[accounts]]
name = "org"
provider = "anthropic"
admin_secret = "env:{admin_env}"
base_url = "{url}/anthropic"
[[keys]]
name = "claude-prod"
provider = "anthropic"
secret = "env:KW_POL_ANT_KEY"
base_url = "{url}/anthropic"
account = "org"
""")
    return path


@pytest.fixture
async def sim():
    s = Simulator()
    await s.start()
    yield s
    await s.stop()


def status(sim: Simulator) -> str:
    return sim.state.keys[SECRET].extra.get("key_status", "active")


async def test_operator_disable_deactivates_at_anthropic_and_enable_reactivates(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["KW_POL_ANT_ADMIN"] = ADMIN
    sim.set_key(SECRET, "anthropic", "healthy", key_id="apikey_01pol", name="claude-prod")
    sim.set_key(ADMIN, "anthropic", "admin")
    path = config(tmp_path, sim.url or "", "KW_POL_ANT_ADMIN")
    rc = await asyncio.to_thread(cli, "disable", "claude-prod", "--reason", "leaked in a gist", "-c", path)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert status(sim) == "inactive"
    assert "disabled in keywatch and disabled at anthropic" in out
    assert await asyncio.to_thread(cli, "enable", "claude-prod", "-c", path) == 0
    assert status(sim) == "active"
    capsys.readouterr()
    await asyncio.to_thread(cli, "events", "-c", path, "--key", "claude-prod")
    text = capsys.readouterr().out
    assert "leaked in a gist" in text and SECRET not in text and ADMIN not in text


async def test_failed_provider_call_pulls_the_key_but_never_claims_the_provider_changed(
    tmp_path: Path, sim: Simulator, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["KW_POL_ANT_BADADMIN"] = (
        "sk-ant-admin01-" + "n" * 60 + "-BADD"
    )  # not an admin key the sim knows
    sim.set_key(SECRET, "anthropic", "healthy", key_id="apikey_01pol", name="claude-prod")
    path = config(tmp_path, sim.url or "", "KW_POL_ANT_BADADMIN")
    rc = await asyncio.to_thread(cli, "disable", "claude-prod", "--reason", "test", "-c", path)
    out = capsys.readouterr().out
    assert rc == 1
    assert "provider side NOT changed" in out
    assert status(sim) == "active"
    from keywatch.store.repo import Store

    store = Store(f"sqlite:///{tmp_path / 'kw.db'}")
    try:
        assert store.admin_info("claude-prod")["state"] == "disabled"
        done = [e for e in store.events("claude-prod") if e.kind == "action_done"]
        assert done[0].data["result"] == "partial" and done[0].data["provider_changed"] is False
    finally:
        store.dispose()


async def test_hook_runs_once_with_names_and_never_the_secret(tmp_path: Path) -> None:
    out = tmp_path / "hook.env"
    extra = f"""
[[policies]]
name = "tell-the-gateway"
when = {{ health = "invalid" }}
actions = [{{ type = "hook", command = ["/bin/sh", "-c", "env >> {out}; echo run >> {out}.count"] }}]
"""
    h = await start(tmp_path, ["a", "b"], {"a": "invalid"}, extra=extra, tag="hk")
    try:
        os.environ["KW_SECRET_IN_DAEMON_ENV"] = h.secrets["a"]
        await h.cycles(3)
        text = out.read_text()
        assert "KEYWATCH_KEY=a\n" in text and "KEYWATCH_POLICY=tell-the-gateway" in text
        assert "KEYWATCH_REASON=health invalid" in text
        assert h.secrets["a"] not in text  # the daemon's environment is not passed on
        assert Path(f"{out}.count").read_text().count("run") == 1  # once while it stays invalid
    finally:
        os.environ.pop("KW_SECRET_IN_DAEMON_ENV", None)
        await stop(h)
