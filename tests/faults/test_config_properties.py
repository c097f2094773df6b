"""Properties of the config loader, over generated input: whatever the text, `settings.loader.parse` either
returns a Config or raises ConfigError (nothing else escapes), and no secret (the values of the environment
variables the config refers to) ever appears in an error."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keywatch.providers import registry
from keywatch.settings.loader import ConfigError, alert_sink_problems, build_inventory, parse

# KW_PROPERTY_EXAMPLES=5000 for a longer search than the suite's bounded one.
BOUNDED = settings(max_examples=int(os.environ.get("KW_PROPERTY_EXAMPLES", "200")), deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])

SECRETS = {
    "KW_PROP_A": "sk-proj-PROPERTYsecretAAAA0000aaaa1111bbbb",
    "KW_PROP_B": "sk-ant-api03-PROPERTYsecretBBBB2222cccc3333",
    "KW_PROP_QUOTE": 'PROPERTY"secret\\with\'quotes{}[]=#',
    "KW_PROP_LINES": "PROPERTYsecret\nsecond line\tand tab",
    "KW_PROP_URL": "https://hooks.slack.com/services/T000/B000/PROPERTYsecretXXXX",
}
REFS = [f"env:{k}" for k in SECRETS] + ["env:KW_PROP_UNSET", "file:/nonexistent/kw", "credential:kw", "azure:key1",
                                         "", "literal-not-a-ref"]
SECTIONS = ["daemon", "probe", "alerts", "keys", "accounts", "pools", "policies", "budgets", "usage", "safety",
            "outage", "alerts.sinks", "alerts.routes", "policies.when"]
FIELDS = ["name", "provider", "secret", "admin_secret", "url", "type", "listen", "database", "interval", "timeout",
          "concurrency", "labels", "account", "enabled", "actions", "when", "health", "sinks", "base_url", "key",
          "usd", "period", "min_severity", "repeat_interval", "allow_literal_secrets", "probe", "model", "jitter"]

COUNTS: Counter[str] = Counter()


@pytest.fixture(autouse=True)
def _secrets_in_env():
    old = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    os.environ.pop("KW_PROP_UNSET", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- TOML from structures ----------------------------------------------------------------------------------
def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        finite = not isinstance(v, float) or (v == v and abs(v) != float("inf"))
        return repr(v) if finite else "nan"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    return "\n".join(f"{json.dumps(k)} = {_value(v)}" for k, v in doc.items()) + "\n"


scalars = st.one_of(
    st.none().map(lambda _: "x"), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(REFS), st.sampled_from(["5m", "-1s", "1h30m", "0s", "1e9h", "127.0.0.1:0",
                                                                  "999.1.1.1:1", "[::1]:9464", "mongodb://x"]),
    st.sampled_from([*registry.names(), "opneai", ""]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner,
                                                 max_size=5)), max_leaves=25)
tables = st.dictionaries(st.sampled_from(FIELDS), values, max_size=8)

key_entry = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["k1", "k2", "k1"]), st.text(max_size=10)),
     "provider": st.sampled_from([*registry.names(), "opneai"]), "secret": st.sampled_from(REFS)},
    optional={"account": st.sampled_from(["a1", "nope"]), "labels": st.dictionaries(st.text(max_size=6),
                                                                                     st.text(max_size=6),
                                                                                     max_size=2),
              "enabled": st.booleans(), "base_url": st.sampled_from(["http://127.0.0.1:9/v1", "nope"]),
              "probe": st.sampled_from(["models", "completion", "chat"])},
)
account_entry = st.fixed_dictionaries(
    {"name": st.sampled_from(["a1", "a2"]), "provider": st.sampled_from(registry.names())},
    optional={"admin_secret": st.sampled_from(REFS), "client_secret": st.sampled_from(REFS)},
)
sink_entry = st.fixed_dictionaries(
    {"name": st.sampled_from(["s1", "s2", "s1"]), "type": st.sampled_from(["slack", "webhook", "alertmanager",
                                                                            "console", "pagerduty"])},
    optional={"url": st.sampled_from([*REFS, "http://127.0.0.1:9093"]), "secret": st.sampled_from(REFS)},
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "daemon": st.fixed_dictionaries({}, optional={"allow_literal_secrets": st.booleans(),
                                                      "listen": scalars, "database": scalars}),
        "keys": st.lists(st.one_of(key_entry, tables), max_size=4),
        "accounts": st.lists(account_entry, max_size=2),
        "alerts": st.fixed_dictionaries({}, optional={"sinks": st.lists(sink_entry, max_size=3)}),
        "probe": tables, "policies": st.lists(tables, max_size=2), "budgets": st.lists(tables, max_size=2),
        "pools": st.lists(tables, max_size=2), "usage": tables, "junk": values,
    },
)

# -- TOML-ish text -----------------------------------------------------------------------------------------
lines = st.one_of(
    st.sampled_from(SECTIONS).map(lambda s: f"[{s}]"), st.sampled_from(SECTIONS).map(lambda s: f"[[{s}]]"),
    st.tuples(st.sampled_from(FIELDS), scalars).map(lambda kv: f"{kv[0]} = {_value(kv[1])}"),
    st.tuples(st.sampled_from(FIELDS), values).map(lambda kv: f"{kv[0]} = {_value(kv[1])}"),
    st.text(max_size=30),
    st.sampled_from(["[", "]]", '"', "= 1", "a = ", 'x = """', "#", "\\", "a.b.c = 1", "[a.b]", "[[a]]", "\x00"]),
)
tomlish = st.lists(lines, max_size=15).map("\n".join)


def _check(text: str) -> None:
    """parse -> build_inventory -> alert sinks, as `config validate` runs them; only ConfigError may end it,
    and never with a secret in it."""
    try:
        config = parse(text, "prop.toml")
        inventory = build_inventory(config, "prop.toml")
        problems = alert_sink_problems(config)
        if problems:
            raise ConfigError("prop.toml", problems)
    except ConfigError as exc:
        COUNTS["refused"] += 1
        message = str(exc)
        for secret in SECRETS.values():
            assert secret not in message, "a secret in the error"
            for part in secret.splitlines():
                assert len(part) < 12 or part not in message, "part of a secret in the error"
        return
    COUNTS["accepted"] += 1
    assert inventory.source == "prop.toml"


@BOUNDED
@given(st.text(max_size=300))
def test_arbitrary_text_only_config_errors(text: str) -> None:
    _check(text)


@BOUNDED
@given(tomlish)
def test_tomlish_text_only_config_errors(text: str) -> None:
    _check(text)


@BOUNDED
@given(documents)
def test_arbitrary_structures_only_config_errors_and_no_secret_echoed(doc: dict[str, Any]) -> None:
    _check(to_toml(doc))


def test_zz_figures(figure) -> None:
    total = COUNTS["refused"] + COUNTS["accepted"]
    figure("config loader properties", f"{total} generated configs (text, TOML-ish, structures): "
           f"{COUNTS['refused']} refused with ConfigError, {COUNTS['accepted']} accepted, 0 other exceptions, "
           "0 secrets echoed")
