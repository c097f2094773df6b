"""`keywatch alert test` reports each sink's own answer (exit 0 ok, 1 failed) without printing its secret URL;
`keywatch silence add|list|remove` manage silences the daemon honours."""

from __future__ import annotations

from pathlib import Path

import pytest

from keywatch.cli import main
from tests.integration.test_notify_delivery import Received, ThreadedReceiver


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'[daemon]\ndatabase = "sqlite:///{tmp_path / "k.db"}"\n' + extra)
    return cfg


SINKS = (
    '[[alerts.sinks]]\nname = "good"\ntype = "webhook"\nurl = "env:KW_GOOD"\nsecret = "env:KW_HMAC"\n'
    '[[alerts.sinks]]\nname = "gone"\ntype = "slack"\nurl = "env:KW_GONE"\n'
)


def test_alert_test_reports_each_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def respond(r: Received) -> tuple[int, dict[str, str], str]:
        return (410, {}, "channel_is_archived") if r.path.startswith("/services") else (200, {}, "ok")

    with ThreadedReceiver(respond) as rx:
        monkeypatch.setenv("KW_GOOD", rx.url("/hook/SECRETPATH"))
        monkeypatch.setenv("KW_GONE", rx.url("/services/T0/B0/SLACKSECRET"))
        monkeypatch.setenv("KW_HMAC", "hmac-0123456789")
        cfg = write_config(tmp_path, SINKS)
        assert main(["alert", "test", "-c", str(cfg), "--sink", "good"]) == 0
        assert main(["alert", "test", "-c", str(cfg)]) == 1
        assert main(["alert", "test", "-c", str(cfg), "--sink", "nope"]) == 2
        requests = list(rx.requests)
    out = capsys.readouterr()
    assert "good (webhook" in out.out and ": ok: HTTP 200" in out.out
    assert "gone (slack" in out.out and "FAILED: HTTP 410: channel_is_archived (permanent" in out.out
    assert "no sink named 'nope'" in out.err
    assert "SECRETPATH" not in out.out + out.err and "SLACKSECRET" not in out.out + out.err
    assert requests[0].json()["test"] is True and "webhook-signature" in requests[0].headers
    assert not (tmp_path / "k.db").exists()  # a test alert is sent directly, never queued


def test_unresolvable_sink_secret_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("KW_GONE", raising=False)
    cfg = write_config(tmp_path, '[[alerts.sinks]]\nname = "gone"\ntype = "slack"\nurl = "env:KW_GONE"\n')
    assert main(["alert", "test", "-c", str(cfg)]) == 2
    assert (
        "alerts.sinks[0].url: sink 'gone': environment variable KW_GONE is not set" in capsys.readouterr().err
    )


def test_silence_add_list_remove(tmp_path: Path, capsys) -> None:
    cfg = str(write_config(tmp_path))
    assert (
        main(
            [
                "silence",
                "add",
                "-c",
                cfg,
                "--match",
                "key=openai-prod",
                "--for",
                "2h",
                "--reason",
                "rotating",
                "--by",
                "alice",
            ]
        )
        == 0
    )
    assert main(["silence", "list", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "key=openai-prod" in out and "active" in out and "alice" in out and "rotating" in out
    assert main(["silence", "remove", "-c", cfg, "1"]) == 0
    assert main(["silence", "list", "-c", cfg]) == 0
    assert "openai-prod" not in capsys.readouterr().out.split("silence 1 ended")[-1]
    assert main(["silence", "remove", "-c", cfg, "1"]) == 2
    assert main(["silence", "add", "-c", cfg, "--match", "key", "--for", "2h", "--reason", "x"]) == 2
    assert "expected LABEL=VALUE" in capsys.readouterr().err
