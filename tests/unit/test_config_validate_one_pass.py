"""`keywatch config validate` reports schema errors and unresolvable secret references in one pass, suggests
the nearest known field, and names the opt-in for literal secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from keywatch.cli import main

CONFIG = """
[probe]
intervall = "1m"

[[keys]]
name = "a"
provider = "openai"
secret = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"
baseurl = "http://127.0.0.1:1"

[[keys]]
name = "b"
provider = "openai"
secret = "env:KW_TEST_NOT_SET_ANYWHERE"
"""


def test_schema_and_secret_problems_come_in_one_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KW_TEST_NOT_SET_ANYWHERE", raising=False)
    cfg = tmp_path / "kw.toml"
    cfg.write_text(CONFIG)
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert f"{cfg}: probe.intervall: unknown field (did you mean interval?)" in lines
    assert f"{cfg}: keys[0].baseurl: unknown field (did you mean base_url?)" in lines
    literal = [line for line in lines if line.startswith(f"{cfg}: keys[0].secret:")]
    assert len(literal) == 1 and "daemon.allow_literal_secrets = true" in literal[0]
    assert "abcdefghijklmnop" not in "\n".join(lines)  # not even part of the literal secret
    assert any(line.startswith(f"{cfg}: keys[1].secret:") and "KW_TEST_NOT_SET_ANYWHERE" in line for line in lines)
    assert len(lines) == 4


CROSS = """
[probe]
intervall = "1m"

[[accounts]]
name = "org"
provider = "openai"
admin_secret = "env:KW_TEST_ADMIN_SET"

[[keys]]
name = "a"
provider = "openai"
secret = "env:KW_TEST_ADMIN_SET"
account = "orgg"

[[keys]]
name = "a"
provider = "openai"
secret = "env:KW_TEST_ADMIN_SET"

[[budgets]]
name = "team"
key = "nope"
limit_usd = 10
period = "month"
"""


def test_cross_section_references_come_with_the_schema_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KW_TEST_ADMIN_SET", "sk-admin-" + "x" * 40)
    cfg = tmp_path / "kw.toml"
    cfg.write_text(CROSS)
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "probe.intervall: unknown field (did you mean interval?)" in err  # the schema error ...
    assert "keys[0].account: no account named 'orgg' (known: org)" in err  # ... and, in the same pass,
    assert "keys[1].name: 'a' is already used by keys[0]" in err  # every reference between sections
    assert "budgets[0].key: no key named 'nope'" in err


def test_a_reference_problem_alone_is_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KW_TEST_ADMIN_SET", "sk-admin-" + "x" * 40)
    cfg = tmp_path / "kw.toml"
    cfg.write_text(CROSS.replace('intervall = "1m"', 'interval = "1m"'))
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("no account named 'orgg'") == 1 and err.count("no key named 'nope'") == 1


def test_a_disabled_keys_secret_is_not_a_problem_in_a_file_that_does_not_validate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KW_TEST_NOT_SET_ANYWHERE", raising=False)
    cfg = tmp_path / "kw.toml"
    cfg.write_text(CONFIG + "enabled = false\n")  # key b: its secret is never read, so its reference is no problem
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "probe.intervall" in err and "KW_TEST_NOT_SET_ANYWHERE" not in err
