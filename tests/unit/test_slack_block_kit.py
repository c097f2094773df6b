"""Every kind of alert keywatch sends renders to Slack blocks that slack_sdk's own Block Kit models accept
(`Block.parse` + `validate_json`, which check types, lengths and counts), the fallback text included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keywatch.cli.alerts import test_message as alert_test_message
from keywatch.domain import Alert, Severity
from keywatch.notify import slack
from keywatch.notify.base import Message, alert_labels

slack_sdk_blocks = pytest.importorskip("slack_sdk.models.blocks", reason="the test extra installs slack_sdk")
Block = slack_sdk_blocks.Block

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
HOSTILE = "<!channel> <https://evil.example|click> & " + "é" * 4000


def key_alert(kind: str, title: str, action: str, severity: Severity = Severity.CRITICAL,
              firing: bool = True, identity: str | None = None, summary: str = "401 invalid_api_key") -> Alert:
    return Alert(identity or "key_health:openai-old", severity, firing, title, summary, NOW, key="openai-old",
                 provider="openai", labels={"team": "payments"},
                 fields={"policy": "default-disable-invalid", "reason": summary, "action": action,
                         "health": kind if kind != "compromised" else "healthy", "kind": kind,
                         "admin_state": "disabled", "masked": "sk-proj-...GDYA", "fingerprint": "sha256:01ab"})


KINDS: dict[str, Alert] = {
    "invalid, disabled": key_alert("invalid", "openai-old invalid: disabled at provider",
                                   "disabled in keywatch and disabled at the provider"),
    "invalid, blocked": key_alert("invalid", "openai-old invalid: disable blocked by blast-radius limit",
                                  "disable blocked by the blast-radius limit (2 keys already disabled)"),
    "quota": key_alert("quota_exhausted", "openai-old quota exhausted: held out of every pool",
                       "held out of every pool", Severity.WARNING, summary="429 insufficient_quota"),
    "forbidden": key_alert("forbidden", "openai-old forbidden: held out of every pool", "held out of every pool",
                           Severity.WARNING, summary="403 model not allowed"),
    "compromised": key_alert("compromised", "openai-old compromised: disabled at provider",
                             "disabled at the provider", summary="the provider reports the key as exposed"),
    "rate limited": key_alert("rate_limited", "openai-old rate limited: alert only", "alerted only",
                              Severity.WARNING),
    "budget exhausted (key)": key_alert("budget_exhausted", "openai-old budget exhausted: held out of every pool",
                                        "held out of every pool", Severity.WARNING, identity="budget:openai-old"),
    "resolved": key_alert("invalid", "openai-old resolved", "re-enabled in keywatch", firing=False),
    "outage": Alert("provider_outage:openai", Severity.CRITICAL, True, "openai outage", "5 of 6 keys fail", NOW,
                    provider="openai", fields={"action": "suspended key-level actions for this provider"}),
    "outage resolved": Alert("provider_outage:openai", Severity.CRITICAL, False, "openai recovered", "", NOW,
                             provider="openai"),
    "budget threshold": Alert("budget:team-a", Severity.WARNING, True, "Budget team-a at 80% of its monthly limit",
                              "80 of 100 USD", NOW, labels={"budget": "team-a"}, fields={"threshold": "80%"}),
    "budget spent": Alert("budget:team-a", Severity.CRITICAL, True, "Budget team-a is spent", "101 of 100 USD",
                          NOW, labels={"budget": "team-a"}, fields={"threshold": "100%"}),
    "budget forecast": Alert("budget_forecast:team-a", Severity.WARNING, True, "team-a runs out in 2 days", "",
                             NOW, labels={"budget": "team-a"}),
    "sink broken": Alert("sink_broken:slack", Severity.CRITICAL, True, "alert sink slack is broken", HOSTILE, NOW,
                         labels={"sink": "slack"}, fields={"action": "stopped sending to this sink"}),
    "blast radius": Alert("blast_radius", Severity.CRITICAL, True, "keywatch stopped acting: blast-radius limit",
                          "3 actions held back", NOW, fields={"action": "held back the actions listed"}),
    "action failed": Alert("action_failed:openai-old", Severity.CRITICAL, True, "disable of openai-old failed",
                           HOSTILE, NOW, key="openai-old", provider="openai"),
    "config refused": Alert("alerts_config_refused", Severity.WARNING, True, "reloaded [alerts] config refused",
                            "alerts.sinks[1].url: ...", NOW),
    "hostile": key_alert("invalid", "openai-old invalid: " + HOSTILE, HOSTILE, summary=HOSTILE),
}


def messages() -> dict[str, Message]:
    out = {name: Message(1, [a], {a.identity: NOW - timedelta(minutes=5)},
                         dashboard_url="https://grafana.example.com/d/kw") for name, a in KINDS.items()}
    out["test alert"] = alert_test_message()
    out["test alert resolved"] = alert_test_message(firing=False)
    many = [key_alert("invalid", f"k{i} invalid: disabled at provider", "disabled", identity=f"key_health:k{i}")
            for i in range(60)]
    out["group of 60"] = Message(2, many)
    return out


@pytest.mark.parametrize("name", list(messages()))
def test_every_kind_passes_block_kit_validation(name: str) -> None:
    body = slack.render(messages()[name])
    assert 1 <= len(body["blocks"]) <= 50
    for raw in body["blocks"]:
        block = Block.parse(raw)
        assert block is not None, raw  # an unknown block type parses to None
        block.validate_json()  # raises SlackObjectFormationError on any limit or field error
    assert body["text"] and len(body["text"]) <= slack.FALLBACK_MAX


def test_the_fallback_text_is_escaped_like_the_blocks() -> None:
    body = slack.render(messages()["sink broken"])
    assert "<!channel>" not in body["text"] and "&lt;!channel&gt;" in body["text"]
    assert "<https://evil" not in body["text"]
    assert all("<!channel>" not in str(b) for b in body["blocks"])


def test_each_kind_has_its_own_alertname_and_key_alerts_carry_health() -> None:
    names = {name: alert_labels(a)["alertname"] for name, a in KINDS.items()}
    assert names["invalid, disabled"] == names["invalid, blocked"] == "KeywatchKeyInvalid"
    assert names["quota"] == "KeywatchKeyQuotaExhausted" and names["forbidden"] == "KeywatchKeyForbidden"
    assert names["compromised"] == "KeywatchKeyCompromised" and names["outage"] == "KeywatchProviderOutage"
    assert names["budget threshold"] == "KeywatchBudgetNearlyUsed"
    assert names["budget spent"] == "KeywatchBudgetExceeded"
    assert names["budget forecast"] == "KeywatchBudgetForecastExhaustion"
    assert alert_labels(KINDS["quota"])["health"] == "quota_exhausted"
    assert "health" not in alert_labels(KINDS["outage"])
