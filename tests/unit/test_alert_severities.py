"""One table of alert names and severities (docs/alerts-and-metrics.md) that the code and the shipped
Prometheus rules both follow: a severity changed in one place and not the others fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keywatch.domain import Alert, Severity
from keywatch.engine.policy import default_policies
from keywatch.notify.base import SEVERITIES, alert_labels
from keywatch.settings.schema import SafetySettings

ROOT = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml", reason="PyYAML reads the rule file")


def doc_table() -> dict[str, tuple[str, bool, bool]]:
    text = (ROOT / "docs/alerts-and-metrics.md").read_text()
    rows = re.findall(r"^\| `(Keywatch\w+)` \| (\w+) \| (yes|no) \| (yes|no) \|", text, re.M)
    assert rows, "the table of alert names is missing"
    return {name: (sev, sent == "yes", rule == "yes") for name, sev, sent, rule in rows}


def rules() -> dict[str, str]:
    data = yaml.safe_load((ROOT / "config/prometheus/keywatch-rules.yml").read_text())
    return {r["alert"]: r["labels"]["severity"] for g in data["groups"] for r in g["rules"] if "alert" in r}


def test_the_table_matches_the_code() -> None:
    table = doc_table()
    sent = {n: s for n, (s, by_us, _) in table.items() if by_us}
    assert sent == {n: str(s) for n, s in SEVERITIES.items()}


def test_the_table_matches_the_shipped_rules() -> None:
    table = doc_table()
    in_rules = {n: s for n, (s, _, rule) in table.items() if rule}
    assert in_rules == rules()


def test_built_in_policies_alert_with_the_table_severity_under_the_table_name() -> None:
    kinds = {"default-disable-invalid": "invalid", "default-disable-compromised": "compromised",
             "default-quota-exhausted": "quota_exhausted", "default-forbidden": "forbidden",
             "default-rate-limited": "rate_limited", "default-budget-exhausted": "budget_exhausted"}
    seen = set()
    for p in default_policies(SafetySettings()):
        for a in p.action_list:
            if a.type != "alert":
                continue
            alert = Alert("key_health:k", a.severity, True, "t", "s", None, key="k",  # type: ignore[arg-type]
                          fields={"kind": kinds[p.name], "health": kinds[p.name]})
            name = alert_labels(alert)["alertname"]
            assert SEVERITIES[name] == a.severity, (p.name, name)
            seen.add(name)
    assert {"KeywatchKeyInvalid", "KeywatchKeyCompromised", "KeywatchKeyQuotaExhausted",
            "KeywatchKeyForbidden"} <= seen


@pytest.mark.parametrize(("identity", "fields", "severity"), [
    ("provider_outage:openai", {}, Severity.CRITICAL),
    ("sink_broken:slack", {}, Severity.CRITICAL),
    ("blast_radius", {}, Severity.CRITICAL),
    ("action_failed:k", {}, Severity.CRITICAL),
    ("budget:team", {"threshold": "80%"}, Severity.WARNING),
    ("budget:team", {"threshold": "100%"}, Severity.CRITICAL),
    ("budget_forecast:team", {}, Severity.WARNING),
])
def test_keywatch_own_alerts_have_their_table_name(identity: str, fields: dict, severity: Severity) -> None:
    alert = Alert(identity, severity, True, "t", "s", None, fields=fields)  # type: ignore[arg-type]
    assert SEVERITIES[alert_labels(alert)["alertname"]] == severity
