"""Policy decisions as pure functions: tables of key states in, actions out, with the clock frozen."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from keywatch.domain import AdminState, Health, KeyState, ProbeResult, Severity
from keywatch.engine.model import AlertWish, KeyView
from keywatch.engine.outage import OutageTracker, detect
from keywatch.engine.plan import CycleInputs, plan_cycle
from keywatch.engine.policy import (
    AlertBook,
    Ledger,
    apply_limits,
    decide,
    default_policies,
    disable_limit,
    effective_policies,
    needed,
)
from keywatch.engine.policy_config import OutageSettings, PolicyConfig, SafetySettings
from keywatch.settings.loader import ConfigError, parse

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def st(health: str = "healthy", consecutive: int = 1, since_min: float = 1, **kw: object) -> KeyState:
    return KeyState(
        key=str(kw.pop("key", "k")),
        provider=str(kw.pop("provider", "openai")),
        fingerprint="sha256:0",
        masked="sk-...0000",
        health=Health(health),
        consecutive=consecutive,
        health_since=NOW - timedelta(minutes=since_min),
        **kw,  # type: ignore[arg-type]
    )


def view(state: KeyState, **kw: object) -> KeyView:
    return KeyView(state, **kw)  # type: ignore[arg-type]


def kinds(views: dict[str, KeyView], policies: list[PolicyConfig] | None = None) -> set[tuple[str, str]]:
    policies = policies if policies is not None else default_policies(SafetySettings())
    decisions, _ = decide(policies, views, NOW)
    return {
        (d.key, d.kind) for d in decisions if d.kind in ("alert", "pool_remove") or needed(d, views[d.key])
    }


@pytest.mark.parametrize(
    ("state", "extra", "expected"),
    [
        (st("invalid", 1), {}, set()),
        (st("invalid", 2), {}, set()),
        (st("invalid", 3), {}, {("k", "disable"), ("k", "alert")}),
        (
            st("invalid", 3, admin_state=AdminState.DISABLED),
            {},
            {("k", "alert")},
        ),  # idempotent: no 2nd disable
        (st("invalid", 9), {"in_outage": True}, set()),  # outage: key actions suspended
        (st("invalid", 5), {"counted_probes": 2}, set()),  # 3 of its 5 probes were during an outage
        (st("quota_exhausted", 1), {}, {("k", "pool_remove"), ("k", "alert")}),
        (st("healthy"), {"signals": frozenset({"budget_exhausted"})}, {("k", "pool_remove"), ("k", "alert")}),
        (st("healthy", compromised=True), {}, {("k", "disable"), ("k", "alert")}),
        (st("healthy"), {"signals": frozenset({"compromised"})}, {("k", "disable"), ("k", "alert")}),
        (st("rate_limited", 100, since_min=29), {}, set()),
        (st("rate_limited", 100, since_min=31), {}, {("k", "alert")}),
        (st("provider_error", 50), {}, set()),  # never blames the key
        (st("unreachable", 50), {}, set()),
        (st("forbidden", 50), {}, {("k", "alert"), ("k", "pool_remove")}),  # out of pools, a person decides
        (
            st("healthy", 3, admin_state=AdminState.DISABLED),
            {"admin_actor": "default-disable-invalid"},
            {("k", "enable")},
        ),
        (
            st("healthy", 2, admin_state=AdminState.DISABLED),
            {"admin_actor": "default-disable-invalid"},
            set(),
        ),
        (st("healthy", 50, admin_state=AdminState.DISABLED), {"admin_actor": "operator:alice"}, set()),
        (
            st("invalid", 50, since_min=60),
            {"admin_actor": "operator:alice", "admin_changed_at": NOW - timedelta(minutes=5)},
            {("k", "alert")},
        ),  # a person enabled it after it went invalid: not undone
        (
            st("invalid", 50, since_min=5),
            {"admin_actor": "operator:alice", "admin_changed_at": NOW - timedelta(minutes=60)},
            {("k", "disable"), ("k", "alert")},
        ),  # it went invalid after the person's decision: new information
    ],
)
def test_default_policies(state: KeyState, extra: dict[str, object], expected: set[tuple[str, str]]) -> None:
    assert kinds({"k": view(state, **extra)}) == expected


def test_auto_enable_can_be_turned_off() -> None:
    state = st("healthy", 10, admin_state=AdminState.DISABLED)
    policies = default_policies(SafetySettings(auto_enable=False))
    assert kinds({"k": view(state, admin_actor="default-disable-invalid")}, policies) == set()


def policy(**kw: object) -> PolicyConfig:
    return PolicyConfig.model_validate({"name": "p", "actions": ["disable"], **kw})


@pytest.mark.parametrize(
    ("when", "state", "extra", "match"),
    [
        ({"health": ["invalid", "forbidden"]}, st("forbidden"), {}, True),
        ({"health": "invalid"}, st("healthy"), {}, False),
        ({"changed_to": "invalid"}, st("invalid"), {"changed_from": Health.HEALTHY}, True),
        ({"changed_to": "invalid"}, st("invalid"), {}, False),
        ({"changed_from": "healthy"}, st("invalid"), {"changed_from": Health.RATE_LIMITED}, False),
        ({"for_duration": "10m", "health": "forbidden"}, st("forbidden", since_min=11), {}, True),
        ({"for_duration": "10m", "health": "forbidden"}, st("forbidden", since_min=9), {}, False),
        (
            {"for_duration": "10m", "health": "forbidden"},
            st("forbidden", since_min=60),
            {"counted_since": NOW - timedelta(minutes=2)},
            False,
        ),
        ({"provider": "anthropic"}, st(provider="anthropic"), {}, True),
        ({"provider": "anthropic"}, st(), {}, False),
        ({"labels": {"env": "prod"}}, st(labels={"env": "prod", "team": "a"}), {}, True),
        ({"labels": {"env": "prod"}}, st(labels={"env": "dev"}), {}, False),
        ({"keys": ["openai-*"]}, st(key="openai-batch"), {}, True),
        ({"keys": ["openai-*"]}, st(key="anthropic-x"), {}, False),
        ({"compromised": True}, st(compromised=True), {}, True),
        ({"admin_state": "disabled"}, st(), {}, False),
        (
            {"disabled_by": "operator"},
            st(admin_state=AdminState.DISABLED),
            {"admin_actor": "operator:bob"},
            True,
        ),
        (
            {"disabled_by": "keywatch"},
            st(admin_state=AdminState.DISABLED),
            {"admin_actor": "operator:bob"},
            False,
        ),
        ({"disabled_by": "any"}, st(), {}, False),
    ],
)
def test_conditions(when: dict[str, object], state: KeyState, extra: dict[str, object], match: bool) -> None:
    _, matched = decide([policy(when=when)], {state.key: view(state, **extra)}, NOW)
    assert bool(matched) is match


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[[policies]]\nname="a"\nwhen={helth="invalid"}\nactions=["disable"]',
            "unknown condition 'helth'; valid conditions: health, changed_to",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="broken"}\nactions=["disable"]',
            "policies[0].when.health: unknown health 'broken'; valid: healthy, rate_limited",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=["delete"]',
            "unknown action 'delete'; valid actions: alert, disable, enable, pool_remove, pool_add, hook",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=[{type="alert", severity="loud"}]',
            "alert.severity",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=[{type="alert", sevrity="critical"}]',
            "valid fields of alert: type, severity, identity, title",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=["revoke"]',
            "set allow_destructive = true",
        ),
        ('[[policies]]\nname="a"\nwhen={}\nactions=["disable"]', "at least one condition is required"),
        (
            '[[policies]]\nname="a"\nwhen={signals="leaked"}\nactions=["disable"]',
            "unknown signal 'leaked'; valid: budget_exhausted, compromised",
        ),
        ('[[policies]]\nname="a"\nwhen={provider="opnai"}\nactions=["disable"]', "unknown provider 'opnai'"),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=[{type="pool_remove", pools=["gone"]}]',
            "no pool named 'gone' (known: none)",
        ),
        (
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=["disable"]\n'
            '[[policies]]\nname="a"\nwhen={health="invalid"}\nactions=["disable"]',
            "'a' is already used",
        ),
        ('[[pools]]\nname="p"', "a pool needs a target"),
        ('[[pools]]\nname="p"\nfile={path="pool.json"}', "expected an absolute path"),
        ("[safety]\nmax_disabled_percent=0", "max_disabled_percent"),
    ],
)
def test_bad_policies_are_refused_with_the_valid_names(toml: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(toml)
    assert expected in "\n".join(exc.value.problems)


def test_written_policies_replace_the_defaults_unless_asked() -> None:
    mine = [policy(when={"health": "forbidden"})]
    assert [p.name for p in effective_policies(mine, SafetySettings())] == ["p"]
    both = effective_policies(mine, SafetySettings(default_policies="always"))
    assert both[0].name == "p" and "default-disable-invalid" in {p.name for p in both}
    assert effective_policies([], SafetySettings(default_policies="never")) == []


def disables(n: int, policy_name: str = "default-disable-invalid") -> list:
    views = {f"k{i}": view(st("invalid", 3, key=f"k{i}")) for i in range(n)}
    decisions, _ = decide(default_policies(SafetySettings()), views, NOW)
    return [d for d in decisions if d.kind == "disable"]


@pytest.mark.parametrize(
    ("fleet", "already", "proposed", "percent", "allowed"),
    [
        (20, 0, 2, 10, 2),
        (20, 0, 3, 10, 0),  # the whole cycle is refused, not the first two of it
        (20, 2, 1, 10, 0),
        (20, 0, 20, 10, 0),
        (3, 0, 1, 10, 1),  # a small fleet may still lose one dead key
        (9, 1, 1, 10, 1),  # ... and act on a second: the floor of 2 keys
        (9, 0, 2, 10, 2),
        (9, 1, 2, 10, 0),
        (100, 5, 5, 10, 5),
    ],
)
def test_fleet_share_limit(fleet: int, already: int, proposed: int, percent: float, allowed: int) -> None:
    ok, blocked = apply_limits(
        disables(proposed),
        ledger=Ledger(),
        now=NOW,
        policy_limits={},
        fleet_size=fleet,
        disabled_by_keywatch=already,
        max_disabled_percent=percent,
    )
    assert len(ok) == allowed and len(blocked) == proposed - allowed
    assert all("blast radius" in b.why for b in blocked)


def test_disable_limit_is_the_share_or_two_keys_whichever_is_more() -> None:
    assert [disable_limit(n, 10) for n in (1, 9, 10, 19, 20, 29, 30, 200)] == [2, 2, 2, 2, 2, 2, 3, 20]


def test_every_block_says_which_setting_raises_the_limit() -> None:
    _, fleet = apply_limits(disables(3), ledger=Ledger(), now=NOW, policy_limits={}, fleet_size=9,
                            disabled_by_keywatch=0, max_disabled_percent=10)
    assert fleet and all("raise safety.max_disabled_percent" in b.why for b in fleet)
    assert "limit 2, at least 2" in fleet[0].why
    _, hourly = apply_limits(disables(2), ledger=Ledger(), now=NOW, policy_limits={"default-disable-invalid": 1},
                             fleet_size=1000, disabled_by_keywatch=0, max_disabled_percent=50)
    assert [b.why.split("; ")[-1] for b in hourly] == [
        "to allow more, raise max_actions_per_hour of the policy or safety.max_actions_per_policy_per_hour"]


def test_per_policy_hourly_limit_slides_with_the_clock() -> None:
    ledger = Ledger()
    with freeze_time(NOW) as clock:
        for _ in range(3):
            ledger.add("default-disable-invalid", datetime.now(UTC))
        clock.tick(timedelta(minutes=30))
        ok, blocked = apply_limits(
            disables(2),
            ledger=ledger,
            now=datetime.now(UTC),
            policy_limits={"default-disable-invalid": 4},
            fleet_size=1000,
            disabled_by_keywatch=0,
            max_disabled_percent=50,
        )
        assert (len(ok), len(blocked)) == (1, 1)
        assert "already took 4 actions in the last hour (limit 4)" in blocked[0].why
        clock.tick(timedelta(minutes=31))
        ok, blocked = apply_limits(
            disables(2),
            ledger=ledger,
            now=datetime.now(UTC),
            policy_limits={"default-disable-invalid": 4},
            fleet_size=1000,
            disabled_by_keywatch=0,
            max_disabled_percent=50,
        )
        assert (len(ok), len(blocked)) == (2, 0)


def test_dry_run_decisions_pass_the_limits_and_count_nothing() -> None:
    views = {f"k{i}": view(st("invalid", 3, key=f"k{i}")) for i in range(10)}
    decisions, _ = decide(default_policies(SafetySettings()), views, NOW, dry_run=True)
    ok, blocked = apply_limits(
        decisions,
        ledger=Ledger(),
        now=NOW,
        policy_limits={},
        fleet_size=10,
        disabled_by_keywatch=0,
        max_disabled_percent=10,
    )
    assert blocked == [] and all(d.dry_run for d in ok)
    plan = plan_cycle(CycleInputs([], SafetySettings(dry_run=True), views, 10, NOW))
    assert plan.holds.removed == {} and plan.alerts == [] and {d.dry_run for d in plan.run} == {True}


def wish(sev: Severity = Severity.CRITICAL, identity: str = "key_health:k") -> AlertWish:
    return AlertWish(identity, sev, "k", "openai", "p", "t", "r")


def test_alert_book_fires_once_for_a_flapping_key_and_resolves_after_quiet_cycles() -> None:
    book = AlertBook(clear_after=3)
    changes = []
    for i in range(20):
        changes += book.update([wish()] if i % 2 == 0 else [])
    assert [c.firing for c in changes] == [True]
    assert book.update([]) == []  # the flapping stopped one cycle ago: quiet for 2 cycles now
    assert [c.firing for c in book.update([])] == [False]
    assert book.firing == {}


def test_alert_book_refires_only_to_raise_severity() -> None:
    book = AlertBook()
    assert [c.wish.severity for c in book.update([wish(Severity.WARNING)])] == [Severity.WARNING]
    assert book.update([wish(Severity.WARNING)]) == []
    assert [c.wish.severity for c in book.update([wish(Severity.CRITICAL), wish(Severity.WARNING)])] == [
        Severity.CRITICAL
    ]
    assert book.update([wish(Severity.WARNING)]) == []


def pr(key: str, health: str, provider: str = "openai") -> ProbeResult:
    return ProbeResult(key, provider, Health(health), NOW, 1.0)


@pytest.mark.parametrize(
    ("healths", "urls", "settings", "outage"),
    [
        (["provider_error"] * 3 + ["healthy"] * 3, {}, {}, True),  # half
        (["provider_error"] * 2 + ["healthy"] * 4, {}, {}, False),
        (["provider_error", "healthy"], {}, {}, False),  # one overloaded key of two: hysteresis decides
        (["provider_error"] * 2, {}, {}, False),  # fewer than 3 keys failing, even all of them
        (["provider_error"] * 3, {}, {}, True),
        (["unreachable"] * 2 + ["provider_error"] + ["healthy"] * 3, {}, {}, True),
        (["invalid"] * 6, {}, {}, False),  # keys failing are the keys' problem
        (["provider_error"], {}, {}, False),  # one key is not a fleet
        (["provider_error"], {}, {"min_keys": 1}, True),
        (
            ["provider_error"] * 3 + ["healthy"] * 6,
            {"k0": "http://gw", "k1": "http://gw", "k2": "http://gw"},
            {},
            True,
        ),  # one base_url
        (["provider_error"] * 6, {}, {"enabled": False}, False),
        (["provider_error"] * 2 + ["healthy"] * 4, {}, {"threshold": 0.3, "min_keys": 2}, True),
        (["provider_error"] * 3 + ["healthy"] * 6, {}, {"threshold": 0.5}, False),  # the fraction too
    ],
)
def test_outage_detection(
    healths: list[str], urls: dict[str, str], settings: dict[str, object], outage: bool
) -> None:
    results = [pr(f"k{i}", h) for i, h in enumerate(healths)]
    found = detect(results, urls, OutageSettings(**settings))  # type: ignore[arg-type]
    assert ("openai" in found) is outage


def test_outage_scope_of_one_base_url_suspends_only_its_keys() -> None:
    results = [
        pr("a", "provider_error"),
        pr("b", "provider_error"),
        pr("c", "healthy"),
        pr("d", "healthy"),
        pr("e", "healthy"),
    ]
    found = detect(
        results,
        {"a": "http://gw", "b": "http://gw", "c": "https://api", "d": "https://api", "e": "https://api"},
        OutageSettings(min_keys=2),
    )
    assert found["openai"].keys == {"a", "b"} and found["openai"].scope == "http://gw"


def test_outage_tracker_announces_start_and_end_once_and_discounts_probes() -> None:
    t = OutageTracker()
    f = detect([pr("a", "provider_error"), pr("b", "provider_error")], {}, OutageSettings(min_keys=2))
    started, ended = t.update(f, NOW)
    assert [x.provider for x in started] == ["openai"] and ended == []
    for i in range(5):
        started, ended = t.update(f, NOW + timedelta(minutes=i))
        assert started == [] and ended == []
        t.count_probe("a", i + 1, True, NOW)
    assert t.counted("a", 5) == 0
    started, ended = t.update({}, NOW + timedelta(minutes=9))
    assert started == [] and [x.provider for x, _ in ended] == ["openai"]
    assert t.counted("a", 7) == 2
    t.count_probe("a", 1, False, NOW)  # health changed: a fresh streak
    assert t.counted("a", 1) == 1


def test_reasons_say_why_in_words() -> None:
    state = replace(st("invalid", 3), http_status=401, error_code="invalid_api_key")
    decisions, _ = decide(default_policies(SafetySettings()), {"k": view(state)}, NOW)
    assert decisions[0].reason == "health invalid (http 401, invalid_api_key), for 3 probes in a row"
