"""Sink payloads: Slack messages stay within Block Kit limits whatever the error text; webhook signatures
verify with the documented recipe and fail when anything is changed; sink config errors name the field."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest

from keywatch.domain import Alert, Severity
from keywatch.notify import slack
from keywatch.notify.base import Message, mask_url, parse_retry_after
from keywatch.notify.webhook import payload, sign, verify
from keywatch.settings import ConfigError
from keywatch.settings.loader import parse

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def alert(i: int = 0, summary: str = "401 invalid_api_key", firing: bool = True) -> Alert:
    return Alert(
        f"key_health:k{i}",
        Severity.CRITICAL,
        firing,
        f"key k{i} (openai) is invalid " + "x" * 300,
        summary,
        NOW,
        key=f"k{i}",
        provider="openai",
        fields={
            "masked": "sk-proj-...GDYA",
            "fingerprint": "sha256:0123456789ab",
            "health": "invalid",
            "transition": "healthy → invalid",
            "action": "disabled the key " + "y" * 3000,
            "extra1": "z" * 5000,
        },
    )


def check_block_kit(body: dict) -> None:
    assert body["text"] and len(body["text"]) <= 3000
    blocks = body["blocks"]
    assert len(blocks) <= 50
    for b in blocks:
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        if b["type"] == "section":
            if "text" in b:
                assert len(b["text"]["text"]) <= 3000
            if "fields" in b:
                assert len(b["fields"]) <= 10
                assert all(len(f["text"]) <= 2000 for f in b["fields"])
        if b["type"] == "context":
            assert len(b["elements"]) <= 10


def test_huge_error_message_stays_within_block_kit_limits() -> None:
    huge = "<provider said> & " + "E" * 100_000
    body = slack.render(
        Message(1, [alert(summary=huge)], {"key_health:k0": NOW}, "https://grafana.example/d/kw")
    )
    check_block_kit(body)
    text = json.dumps(body)
    assert "&lt;provider said&gt; &amp;" in text  # escaped for mrkdwn
    assert "sk-proj-...GDYA" in text and "sha256:0123456789ab" in text and "grafana.example" in text
    assert "2026-03-02 09:00:00 UTC" in text  # since when


def test_a_group_of_200_alerts_is_one_message_within_limits() -> None:
    body = slack.render(Message(1, [alert(i, summary="E" * 5000) for i in range(200)]))
    check_block_kit(body)
    assert "more alerts in this group" in json.dumps(body)
    assert "200 alerts firing" in body["blocks"][0]["text"]["text"]


def test_resolved_message_says_so() -> None:
    body = slack.render(Message(1, [alert(firing=False)]))
    assert body["blocks"][0]["text"]["text"].startswith("RESOLVED")


def test_signature_verifies_with_the_readme_recipe_and_fails_when_tampered() -> None:
    secret = "whsec-test-0123456789"
    body = json.dumps(payload(Message(7, [alert()]))).encode()
    header = sign(secret, body)

    # The recipe from the README, verbatim in spirit: parse t and v1, HMAC "t.body", compare, check age.
    def readme_verify(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
        if abs(time.time() - t) > tolerance:
            return False
        expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts["v1"])

    assert readme_verify(secret, body, header) and verify(secret, body, header)
    assert not readme_verify(secret, body.replace(b"k0", b"k1"), header)
    assert not readme_verify("another-secret", body, header)
    t = int(header.split(",")[0][2:])
    assert not readme_verify(secret, body, header.replace(f"t={t}", f"t={t + 1}"))
    stale = sign(secret, body, timestamp=int(time.time()) - 3600)
    assert not readme_verify(secret, body, stale) and not verify(secret, body, stale)
    assert not verify(secret, body, "garbage")


def test_urls_are_masked_and_retry_after_is_read() -> None:
    masked = mask_url("https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX")
    assert "SECRET" not in masked and masked.startswith("https://hooks.slack.com/services/")
    assert "pw" not in mask_url("https://user:pw@example.com/hook/abc")
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Mon, 02 Mar 2026 09:00:30 GMT", now=NOW) == 30.0
    assert parse_retry_after("soon") is None


SINK = '[[alerts.sinks]]\nname = "s"\n'
BAD = [
    (SINK + 'type = "pagerduty"\n', "alerts.sinks[0].type", "'pagerduty' is not allowed"),
    (SINK + 'type = "slack"\n', "alerts.sinks[0]", "url is required for a slack sink"),
    (
        SINK + 'type = "slack"\nurl = "https://hooks.slack.com/services/T/B/X"\n',
        "alerts.sinks[0]",
        "URL is a secret",
    ),
    (SINK + 'type = "console"\nsecret = "env:X"\n', "alerts.sinks[0]", "secret is only used by webhook"),
    (SINK + 'type = "console"\ncolour = "red"\n', "alerts.sinks[0].colour", "unknown field"),
    (
        SINK + 'type = "console"\n' + SINK + 'type = "console"\n',
        "alerts",
        "sinks[1].name: 's' is already used",
    ),
    (SINK + 'type = "console"\n[[alerts.routes]]\nsinks = ["nope"]\n', "alerts", "no sink named 'nope'"),
    ('[alerts]\nrepeat_interval = "often"\n', "alerts.repeat_interval", "not a duration"),
    (
        SINK + 'type = "console"\nmin_severity = "urgent"\n',
        "alerts.sinks[0].min_severity",
        "'urgent' is not allowed",
    ),
]


@pytest.mark.parametrize(("text", "where", "reason"), BAD, ids=[b[2] for b in BAD])
def test_bad_alert_config_names_field_and_reason(text: str, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "bad.toml")
    assert any(p.startswith(where) and reason in p for p in info.value.problems), info.value.problems
