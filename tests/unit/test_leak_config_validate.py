"""`keywatch config validate` resolves the `[leaks]` receivers' secret references as the daemon does at
start: one that does not resolve is an error naming the setting and the reference, never a value, reported
in the same pass as the keys' problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from keywatch.cli import main

LITERAL = "hmac-literal-" + "v4lue" * 6

CONFIG = f"""
[[keys]]
name = "a"
provider = "openai"
secret = "env:KW_LEAKCFG_KEY"

[leaks.github]
webhook_secret = "env:KW_LEAKCFG_HOOK"
token = "file:{{tmp}}/gh-token"

[leaks.generic]
token = "env:KW_LEAKCFG_GEN"
hmac_secret = "{LITERAL}"
"""


def write(tmp: Path) -> Path:
    cfg = tmp / "kw.toml"
    cfg.write_text(CONFIG.replace("{tmp}", str(tmp)))
    return cfg


def test_every_leaks_reference_is_resolved_and_a_bad_one_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KW_LEAKCFG_HOOK", raising=False)
    monkeypatch.delenv("KW_LEAKCFG_KEY", raising=False)
    monkeypatch.setenv("KW_LEAKCFG_GEN", "generic-token-" + "g" * 20)
    cfg = write(tmp_path)
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    hook = "leaks.github.webhook_secret (env:KW_LEAKCFG_HOOK): environment variable KW_LEAKCFG_HOOK is not set"
    assert f"{cfg}: {hook}" in lines
    assert any(
        line.startswith(f"{cfg}: leaks.github.token (file:{tmp_path}/gh-token): ") and "does not exist" in line
        for line in lines
    )
    [literal] = [line for line in lines if line.startswith(f"{cfg}: leaks.generic.hmac_secret (a literal value): ")]
    assert "daemon.allow_literal_secrets = true" in literal
    assert any(line.startswith(f"{cfg}: keys[0].secret:") for line in lines)  # the keys' problems, same pass
    assert not [line for line in lines if "leaks.generic.token" in line]  # it resolves
    assert "v4lue" not in err and "g" * 20 not in err


def test_with_every_reference_resolvable_the_config_is_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KW_LEAKCFG_HOOK", "KW_LEAKCFG_GEN", "KW_LEAKCFG_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-" + "s" * 24)
    (tmp_path / "gh-token").write_text("ghp_" + "t" * 36 + "\n")
    cfg = write(tmp_path)
    cfg.write_text(cfg.read_text().replace(f'"{LITERAL}"', '"env:KW_LEAKCFG_GEN"'))
    assert main(["config", "validate", "-c", str(cfg)]) == 0
    assert "ok (1 keys" in capsys.readouterr().out
    # the token file removed: refused again, naming it
    (tmp_path / "gh-token").unlink()
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    assert f"leaks.github.token (file:{tmp_path}/gh-token)" in capsys.readouterr().err
