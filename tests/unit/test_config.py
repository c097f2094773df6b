"""Config loading: every malformed file is refused with the field and the reason; the example stays true."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from keywatch.cli import main
from keywatch.settings.loader import ConfigError, load_inventory, parse
from keywatch.settings.schema import json_schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "keywatch.example.toml"

GOOD_KEY = '[[keys]]\nname = "k"\nprovider = "openai"\nsecret = "env:K"\n'

MALFORMED = [
    # (file text, field path expected in the message, words of the reason)
    ("[daemon]\nlisten = \"localhost\"\n", "daemon.listen", "host:port"),
    ("[probe]\ninterval = \"5 minutes\"\n", "probe.interval", "not a duration"),
    ("[probe]\ninterval = \"0s\"\n", "probe.interval", "at least 1s"),
    ("[probe]\nconcurrency = 0\n", "probe.concurrency", "greater than or equal to 1"),
    ("[probe]\ntimeout = \"1h\"\n", "probe.timeout", "between"),
    (GOOD_KEY + GOOD_KEY, "keys[1].name", "already used by keys[0]"),
    ('[[keys]]\nname = "has space"\nprovider = "openai"\nsecret = "env:K"\n', "keys[0].name", "does not match"),
    ('[[keys]]\nname = "k"\nprovider = "opneai"\nsecret = "env:K"\n', "keys[0].provider", "unknown provider 'opneai'"),
    ('[[keys]]\nname = "k"\nprovider = "openai"\n', "keys[0].secret", "is required"),
    (GOOD_KEY + 'probe = "chat"\n', "keys[0].probe", "'chat' is not allowed"),
    (GOOD_KEY + 'colour = "red"\n', "keys[0].colour", "unknown field"),
    ('[[keys]]\nname = "k"\nprovider = "azure_openai"\nsecret = "env:K"\n', "keys[0]", "endpoint is required"),
    (GOOD_KEY + 'region = "us-east-1"\n', "keys[0]", "region is not used by provider openai"),
    (GOOD_KEY + 'base_url = "api.openai.com"\n', "keys[0].base_url", "http(s) URL"),
    (GOOD_KEY + 'account = "nope"\n', "keys[0].account", "no account named 'nope'"),
    (GOOD_KEY + "labels = { \"team-name\" = \"x\" }\n", "keys[0].labels.team-name", "does not match"),
    ("[daemons]\nlisten = \"127.0.0.1:1\"\n", "daemons", "unknown field"),
    ("[[keys]\nname = 1\n", "not valid TOML", "line 1"),
    (GOOD_KEY + '[[budgets]]\nname = "b"\nkey = "nope"\nusd = 10\n', "budgets[0].key", "no key named 'nope'"),
    (GOOD_KEY + 'probe = "completion"\n[[keys]]\nname = "m"\nprovider = "moonshot"\nsecret = "env:K"\n'
     'probe = "completion"\n', "keys[1]", "not available for provider moonshot"),
]


@pytest.mark.parametrize(("text", "where", "reason"), MALFORMED, ids=[m[1] + ":" + m[2] for m in MALFORMED])
def test_malformed_config_is_refused_naming_field_and_reason(text: str, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "bad.toml")
    lines = str(info.value).splitlines()
    assert any(line.startswith(f"bad.toml: {where}") and reason in line for line in lines), lines


def test_every_problem_is_reported_at_once() -> None:
    text = '[probe]\ninterval = "x"\nconcurrency = -1\n[[keys]]\nname = "a b"\nprovider = "x"\nsecret = "env:K"\n'
    with pytest.raises(ConfigError) as info:
        parse(text, "f.toml")
    assert len(info.value.problems) == 4


def test_cli_exit_code_2_and_message_on_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[keys]]\nname = "k"\nprovider = "openai"\nsecret = "env:K"\nprobe = "chat"\n')
    assert main(["config", "validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: keys[0].probe:" in err


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: file not found" in capsys.readouterr().err


def test_unset_env_reference_is_an_error_naming_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KW_UNSET_VAR", raising=False)
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[keys]]\nname = "prod"\nprovider = "openai"\nsecret = "env:KW_UNSET_VAR"\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(cfg)
    assert "keys[0].secret: key 'prod': environment variable KW_UNSET_VAR is not set" in str(info.value)


def test_empty_or_unreadable_secret_never_becomes_an_empty_key(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    monkeypatch.setenv("KW_EMPTY", "")
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        f'[[keys]]\nname = "a"\nprovider = "openai"\nsecret = "file:{empty}"\n'
        f'[[keys]]\nname = "b"\nprovider = "openai"\nsecret = "file:{tmp_path}/missing.key"\n'
        '[[keys]]\nname = "c"\nprovider = "openai"\nsecret = "env:KW_EMPTY"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_inventory(cfg)
    problems = info.value.problems
    assert any("keys[0].secret: key 'a'" in p and "empty" in p for p in problems)
    assert any("keys[1].secret: key 'b'" in p and "does not exist" in p for p in problems)
    assert any("keys[2].secret: key 'c'" in p and "empty" in p for p in problems)


def test_secret_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f.key").write_text("sk-from-file-0123456789\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "admin").write_text("sk-admin-from-credential-0123")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("KW_K", "sk-from-env-0123456789")
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        '[[accounts]]\nname = "org"\nprovider = "openai"\nadmin_secret = "credential:admin"\n'
        '[[keys]]\nname = "a"\nprovider = "openai"\nsecret = "env:KW_K"\naccount = "org"\n'
        f'[[keys]]\nname = "b"\nprovider = "openai"\nsecret = "file:{tmp_path}/f.key"\n'
    )
    inv = load_inventory(cfg)
    assert [k.secret.reveal() for k in inv.keys] == ["sk-from-env-0123456789", "sk-from-file-0123456789"]
    assert inv.accounts["org"].admin_secret.reveal() == "sk-admin-from-credential-0123"
    assert "sk-from-env" not in repr(inv.keys[0])


def test_credential_without_credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = tmp_path / "k.toml"
    cfg.write_text('[[keys]]\nname = "a"\nprovider = "openai"\nsecret = "credential:openai"\n')
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY is not set"):
        load_inventory(cfg)


def test_literal_secret_refused_unless_allowed_then_warned(tmp_path: Path) -> None:
    cfg = tmp_path / "k.toml"
    body = '[[keys]]\nname = "a"\nprovider = "openai"\nsecret = "sk-literal-0123456789abcdef"\n'
    cfg.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_inventory(cfg)
    assert "keys[0].secret: key 'a': is a literal secret" in str(info.value)
    assert "sk-literal" not in str(info.value)
    cfg.write_text("[daemon]\nallow_literal_secrets = true\n" + body)
    inv = load_inventory(cfg)
    assert inv.keys[0].secret.reveal() == "sk-literal-0123456789abcdef"
    assert any("written in the config file" in w for w in inv.warnings)


def _schema_fields(schema: dict, node: dict, prefix: str) -> set[str]:
    out = set()
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].split("/")[-1]]
    for name, prop in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        out.add(path)
        target = prop.get("items", prop)
        if "$ref" in target:
            out |= _schema_fields(schema, target, path)
    return out


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-example-0123456789")
    monkeypatch.setenv("OPENAI_PROD_KEY", "sk-proj-example-0123456789")
    inv = load_inventory(EXAMPLE)
    assert [k.name for k in inv.keys] == ["openai-prod"]  # local-vllm is disabled


def test_example_config_documents_every_field() -> None:
    """Every field of the schema appears in the example (set or commented out), so the example never drifts."""
    text = EXAMPLE.read_text()
    schema = json_schema()
    missing = []
    for path in sorted(_schema_fields(schema, schema, "")):
        name = path.rsplit(".", 1)[-1]
        if not re.search(rf"^#?\s*{re.escape(name)}\s*=|^#?\s*\[+{re.escape(path)}\]+", text, re.M):
            missing.append(path)
    assert not missing, f"config/keywatch.example.toml does not mention: {missing}"


def test_example_commented_blocks_parse_when_uncommented() -> None:
    """Commented-out examples are real TOML, so a user can uncomment them as they are."""
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        m = re.match(r"^# ((\[\[?[a-z.]+\]\]?)|([a-z_]+ = .*))$", line)
        lines.append(m.group(1) if m else line)
    tomllib.loads("\n".join(lines))


def test_schema_command_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "keywatch configuration"
    assert "keys" in schema["properties"]
    assert schema["$defs"]["KeyConfig"]["properties"]["provider"]["enum"][0] == "openai"
