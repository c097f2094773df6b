"""Until policies emit their own, a key going bad fires `key_health:<key>` and working again resolves it;
provider or network trouble says nothing about the key and neither fires nor resolves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from keywatch.domain import Health, KeyState, Severity, Transition
from keywatch.notify.service import key_alert

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
STATE = KeyState("prod", "openai", "sha256:0123456789ab", "sk-proj-...GDYA")


@pytest.mark.parametrize(
    ("old", "new", "firing", "severity"),
    [
        (Health.HEALTHY, Health.INVALID, True, Severity.CRITICAL),
        (Health.HEALTHY, Health.QUOTA_EXHAUSTED, True, Severity.WARNING),
        (Health.UNKNOWN, Health.FORBIDDEN, True, Severity.WARNING),
        (Health.INVALID, Health.HEALTHY, False, None),
        (Health.QUOTA_EXHAUSTED, Health.RATE_LIMITED, False, None),
    ],
)
def test_key_health_changes_become_alerts(
    old: Health, new: Health, firing: bool, severity: Severity | None
) -> None:
    t = Transition("prod", "openai", old, new, AT, 401, "invalid_api_key", "Incorrect API key provided")
    a = key_alert(t, STATE, {"team": "payments"})
    assert a is not None and a.identity == "key_health:prod" and a.firing is firing
    if severity is not None:
        assert a.severity is severity and a.summary == "Incorrect API key provided"
    assert a.fields["masked"] == "sk-proj-...GDYA" and a.fields["fingerprint"] == "sha256:0123456789ab"
    assert a.fields["transition"] == f"{old} → {new}" and a.labels == {"team": "payments"}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Health.HEALTHY, Health.PROVIDER_ERROR),
        (Health.INVALID, Health.UNREACHABLE),
        (Health.UNKNOWN, Health.HEALTHY),
        (Health.PROVIDER_ERROR, Health.HEALTHY),
    ],
)
def test_changes_that_say_nothing_about_the_key_make_no_alert(old: Health, new: Health) -> None:
    assert key_alert(Transition("prod", "openai", old, new, AT), STATE) is None
