"""No shipped policy re-enables a compromised key: the built-in ones (with and without auto_enable), every
policy of the example config and every `[[policies]]` example in docs/, planned with the daemon's own
decision function against a compromised key that keywatch disabled and that is healthy since long."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keywatch.domain import AdminState, Health, KeyState
from keywatch.engine.model import KeyView
from keywatch.engine.plan import CycleInputs, plan_cycle
from keywatch.engine.policy import default_policies
from keywatch.engine.policy_config import PolicyConfig, SafetySettings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def example_policies() -> list[tuple[str, dict]]:
    """The commented [[policies]] tables of config/keywatch.example.toml, uncommented (a table runs until
    the next one or the first line that is not a comment; only its `field = value` and table lines count)."""
    blocks: list[list[str]] = []
    for line in (ROOT / "config" / "keywatch.example.toml").read_text().splitlines():
        text = line[2:] if line.startswith("# ") else None
        if text is not None and text.strip() == "[[policies]]":
            blocks.append([text])
        elif blocks and blocks[-1] and text is not None:
            if re.match(r"^(\[policies\.when\]|[a-z_]+\s*=)", text):
                blocks[-1].append(text)
        elif blocks and line.strip() and not line.startswith("#"):
            blocks.append([])
    found = []
    for b in blocks:
        if b:
            parsed = tomllib.loads("\n".join(b))["policies"][0]
            found.append((f"example:{parsed['name']}", parsed))
    return found


def doc_policies() -> list[tuple[str, dict]]:
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```toml\n(.*?)```", page.read_text(), re.S):
            if "[[policies]]" not in block:
                continue
            try:
                data = tomllib.loads(block)
            except tomllib.TOMLDecodeError:
                continue
            found += [(f"{page.name}:{p['name']}", p) for p in data.get("policies", [])]
    return found


def shipped() -> list[tuple[str, PolicyConfig]]:
    out = [(f"built-in:{p.name}", p) for p in default_policies(SafetySettings(auto_enable=True))]
    out += [(n, PolicyConfig.model_validate(p)) for n, p in example_policies() + doc_policies()]
    return out


def compromised_views(signal: bool) -> dict[str, KeyView]:
    state = KeyState(
        "k",
        "openrouter",
        "sha256:0",
        "sk-or-v1-...0000",
        health=Health.HEALTHY,
        admin_state=AdminState.DISABLED,
        health_since=NOW - timedelta(days=3),
        consecutive=5000,
        compromised=not signal,
        compromise_reason=None if signal else "AWS quarantine policy",
        labels={"env": "prod", "team": "search"},
    )
    return {
        "k": KeyView(
            state,
            frozenset({"compromised"}) if signal else frozenset(),
            admin_actor="default-disable-compromised",
            admin_changed_at=NOW - timedelta(days=3),
        )
    }


def test_the_shipped_policies_include_re_enabling_ones() -> None:
    names = [n for n, p in shipped() if any(a.type == "enable" for a in p.action_list)]
    assert "built-in:default-enable-recovered" in names and "example:bring-back-after-recovery" in names


@pytest.mark.parametrize("signal", [True, False], ids=["leak-signal", "provider-flag"])
@pytest.mark.parametrize(("name", "policy"), shipped(), ids=[n for n, _ in shipped()])
def test_no_shipped_policy_re_enables_a_compromised_key(name: str, policy: PolicyConfig, signal: bool) -> None:
    views = compromised_views(signal)
    plan = plan_cycle(CycleInputs([policy], SafetySettings(auto_enable=True, default_policies="never"), views, 10, NOW))
    assert not [d for d in plan.run if d.kind == "enable"], name
    assert not plan.holds.added, name


def test_the_same_key_not_compromised_is_re_enabled_by_the_built_in_policy() -> None:
    """The check above can fail: without the compromise, the built-in recovery policy does enable it."""
    views = compromised_views(True)
    clean = {
        "k": KeyView(
            views["k"].state,
            frozenset(),
            admin_actor="default-disable-invalid",
            admin_changed_at=NOW - timedelta(days=3),
        )
    }
    plan = plan_cycle(CycleInputs([], SafetySettings(auto_enable=True), clean, 10, NOW))
    assert [d.kind for d in plan.run] == ["enable"]
    plan = plan_cycle(CycleInputs([], SafetySettings(auto_enable=True), views, 10, NOW))
    assert [d.kind for d in plan.run if d.kind == "enable"] == []
    assert any("only a person re-enables it" in s.why for s in plan.skipped)
