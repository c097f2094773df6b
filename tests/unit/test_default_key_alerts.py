"""Key alerts are decided in one place, the cycle plan: the built-in policies cover every health that
blames a key and a compromised key, each with its severity; provider or network trouble raises none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from keywatch.domain import Health, KeyState, Severity
from keywatch.engine.model import KeyView
from keywatch.engine.plan import CycleInputs, plan_cycle
from keywatch.engine.policy_config import SafetySettings

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def plan_for(health: Health, probes: int = 3, compromised: bool = False, safety: SafetySettings | None = None):
    st = KeyState("prod", "openai", "sha256:0123456789ab", "sk-proj-...GDYA", health=health,
                  health_since=NOW - timedelta(hours=1), last_probe_at=NOW, consecutive=probes,
                  compromised=compromised)
    views = {"prod": KeyView(st)}
    return plan_cycle(CycleInputs([], safety or SafetySettings(), views, 20, NOW))


@pytest.mark.parametrize(
    ("health", "severity", "also"),
    [
        (Health.INVALID, Severity.CRITICAL, "disable"),
        (Health.QUOTA_EXHAUSTED, Severity.WARNING, "pool_remove"),
        (Health.FORBIDDEN, Severity.WARNING, "pool_remove"),
    ],
)
def test_every_health_that_blames_a_key_raises_an_alert(health: Health, severity: Severity, also: str) -> None:
    plan = plan_for(health)
    assert [(a.key, a.severity) for a in plan.alerts] == [("prod", severity)]
    assert also in {d.kind for d in plan.decisions}


def test_a_compromised_key_raises_a_critical_alert_and_is_disabled() -> None:
    plan = plan_for(Health.HEALTHY, compromised=True)
    assert [a.severity for a in plan.alerts] == [Severity.CRITICAL]
    assert [d.kind for d in plan.run] == ["disable"]


@pytest.mark.parametrize("health", [Health.PROVIDER_ERROR, Health.UNREACHABLE, Health.HEALTHY])
def test_trouble_that_says_nothing_about_the_key_raises_none(health: Health) -> None:
    assert plan_for(health).alerts == []


def test_with_the_built_in_policies_off_no_key_alert_is_decided() -> None:
    assert plan_for(Health.FORBIDDEN, safety=SafetySettings(default_policies="never")).alerts == []
