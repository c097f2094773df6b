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
