"""With the default config (no policy written), a key that turns forbidden reaches every kind of sink over
real HTTP: Slack, a signed webhook and a real Alertmanager, and each says what keywatch did about it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_alertmanager import alertmanager, get_json, wait_for  # noqa: F401 (fixture)
from tests.integration.test_notify_delivery import ThreadedReceiver

pytestmark = pytest.mark.slow


def test_healthy_to_forbidden_reaches_slack_webhook_and_alertmanager(sim, alertmanager, tmp_path: Path) -> None:  # noqa: F811
    am_url, _ = alertmanager
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="healthy")
    keys = [{"name": "openai-restricted", "provider": "openai", "secret": "env:KW_KEY",
             "base_url": f"{sim.url}/openai/v1"}]
    with ThreadedReceiver() as rx:
        extra = (
            '\n[[alerts.sinks]]\nname = "chat"\ntype = "slack"\nurl = "env:KW_SLACK"\n'
            '\n[[alerts.sinks]]\nname = "hook"\ntype = "webhook"\nurl = "env:KW_HOOK"\nsecret = "env:KW_HMAC"\n'
            f'\n[[alerts.sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{am_url}"\n'
        )
        cfg = tmp_path / "keywatch.toml"
        cfg.write_text(toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{free_port()}", interval="1s",
                                   extra=extra))
        env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
        env.update(KW_KEY=secret, KW_SLACK=rx.url("/slack"), KW_HOOK=rx.url("/hook"), KW_HMAC="h" * 32)
        log = tmp_path / "daemon.log"
        daemon = subprocess.Popen([sys.executable, "-m", "keywatch", "run", "-c", str(cfg)], env=env,
                                  stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "health_changed" in log.read_text() or "started" in log.read_text(), "the daemon")
            sim.set_key(secret, provider="openai", behaviour="missing_scope")

            def at(path: str) -> list[dict]:
                return [r.json() for r in rx.accepted() if r.path == path and "openai-restricted" in r.body.decode()]

            slack = wait_for(lambda: at("/slack"), "the Slack message")[0]
            hook = wait_for(lambda: at("/hook"), "the webhook delivery")[0]
            am = wait_for(lambda: [a for a in get_json(f"{am_url}/api/v2/alerts")
                                   if a["labels"].get("key") == "openai-restricted"], "the alert in Alertmanager")[0]

            slack_text = json.dumps(slack)
            assert "forbidden" in slack_text and "What keywatch did" in slack_text
            assert "held out of every pool" in slack_text
            [sent] = hook["alerts"]
            assert sent["severity"] == "warning" and sent["fields"]["health"] == "forbidden"
            assert sent["fields"]["action"] == "held out of every pool"
            assert sent["fields"]["policy"] == "default-forbidden"
            assert am["labels"]["severity"] == "warning"
            assert am["annotations"]["action"] == "held out of every pool"
            for body in (slack_text, json.dumps(hook), json.dumps(am)):
                assert secret not in body
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, log.read_text()
    assert secret not in log.read_text()
