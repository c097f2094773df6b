"""A real Prometheus Alertmanager receives keywatch's alert for a broken key and shows it resolved after the
key recovers (its API and its own webhook notification both say so)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, toml_config, unique_secret
from tests.integration.test_notify_delivery import ThreadedReceiver

pytestmark = pytest.mark.slow

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def wait_for(predicate, what: str, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def alertmanager(tmp_path: Path):
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install -y prometheus-alertmanager)")
    with ThreadedReceiver() as rx:
        port = free_port()
        cfg = tmp_path / "alertmanager.yml"
        cfg.write_text(
            "route:\n  receiver: rx\n  group_by: [identity]\n  group_wait: 0s\n  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            f"receivers:\n  - name: rx\n    webhook_configs:\n      - url: {rx.url('/am')}\n"
            "        send_resolved: true\n"
        )
        log = (tmp_path / "alertmanager.log").open("w")
        proc = subprocess.Popen(
            [
                ALERTMANAGER,
                f"--config.file={cfg}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(
                lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
                "alertmanager ready",
            )
            yield url, rx
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()


def test_alertmanager_shows_the_key_alert_and_then_its_resolution(sim, alertmanager, tmp_path: Path) -> None:
    am_url, rx = alertmanager
    secret = unique_secret()
    sim.set_key(secret, provider="openai", behaviour="invalid")
    keys = [
        {
            "name": "openai-prod",
            "provider": "openai",
            "secret": "env:KW_KEY",
            "base_url": f"{sim.url}/openai/v1",
            "labels": {"team": "payments"},
        }
    ]
    extra = (
        '\n[alerts]\ndashboard_url = "https://grafana.example.com/d/keywatch"\n'
        f'[[alerts.sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{am_url}"\nresend_interval = "1s"\n'
    )
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(
        toml_config(keys, db=tmp_path / "k.db", listen=f"127.0.0.1:{free_port()}", interval="1s", extra=extra)
    )
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    env["KW_KEY"] = secret
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "keywatch", "run", "-c", str(cfg)],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )

    def ours() -> list[dict]:
        return [a for a in get_json(f"{am_url}/api/v2/alerts") if a["labels"].get("key") == "openai-prod"]

    try:
        firing = wait_for(ours, "the alert in Alertmanager")[0]
        assert firing["status"]["state"] == "active"
        assert firing["labels"]["identity"] == "key_health:openai-prod"
        assert firing["labels"]["severity"] == "critical"
        # One alertname per kind, health as a label (routes and inhibit rules use them); the title names
        # the key, its health and what keywatch did.
        assert firing["labels"]["alertname"] == "KeywatchKeyInvalid"
        assert firing["labels"]["health"] == "invalid"
        assert firing["annotations"]["title"].startswith("openai-prod invalid: ")
        assert firing["labels"]["team"] == "payments"
        assert firing["annotations"]["masked"].endswith(secret[-4:]) and secret not in json.dumps(firing)
        assert firing["generatorURL"] == "https://grafana.example.com/d/keywatch"

        sim.set_key(secret, provider="openai", behaviour="healthy")
        wait_for(lambda: not ours(), "the alert to leave Alertmanager's active list")

        def resolved_notification() -> bool:
            for r in rx.accepted():
                body = r.json()
                if body["status"] == "resolved" and body["alerts"][0]["labels"]["key"] == "openai-prod":
                    return True
            return False

        wait_for(resolved_notification, "Alertmanager's resolved notification")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log.read_text()
    assert secret not in log.read_text()


def test_alert_test_resolves_its_own_test_alert(alertmanager, tmp_path: Path) -> None:
    am_url, _ = alertmanager
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'[daemon]\ndatabase = "sqlite:///{tmp_path / "k.db"}"\n'
                   f'[[alerts.sinks]]\nname = "am"\ntype = "alertmanager"\nurl = "{am_url}"\n')
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    done = subprocess.run([sys.executable, "-m", "keywatch", "alert", "test", "-c", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "am (alertmanager" in done.stdout and "ok: HTTP 200; resolved" in done.stdout

    def test_alerts(active: bool) -> list[dict]:
        url = f"{am_url}/api/v2/alerts?active={str(active).lower()}&silenced=true&inhibited=true"
        return [a for a in get_json(url) if a["labels"].get("alertname") == "KeywatchTest"]

    # Alertmanager took the test alert and its resolve (endsAt set, in the past): nothing stays active.
    time.sleep(1.0)
    assert test_alerts(active=True) == []
