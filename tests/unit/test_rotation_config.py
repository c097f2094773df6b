"""An IAM key's access_key_id may be a secret reference, read beside the secret (a rotation rewrites both in
one destination): resolved at load, and a reference that cannot be read is an error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from keywatch.settings.loader import ConfigError, load_inventory

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"


def write(tmp_path: Path, access_key_id: str) -> Path:
    (tmp_path / "secret").write_text(SECRET + "\n")
    cfg = tmp_path / "keywatch.toml"
    cfg.write_text(f'''[daemon]
database = "sqlite:///{tmp_path / "k.db"}"

[[keys]]
name = "aws-app"
provider = "aws_iam"
secret = "file:{tmp_path / "secret"}"
access_key_id = "{access_key_id}"
''')
    return cfg


def test_access_key_id_as_a_reference_is_read_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KW_AKID", "AKIAROTATED000000001")
    key = load_inventory(write(tmp_path, "env:KW_AKID")).key("aws-app")
    assert key.options["access_key_id"] == "AKIAROTATED000000001"
    assert load_inventory(write(tmp_path, "AKIALITERAL000000001")).key("aws-app").options["access_key_id"] == (
        "AKIALITERAL000000001"
    )


def test_an_access_key_id_reference_that_cannot_be_read_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KW_AKID_MISSING", raising=False)
    with pytest.raises(ConfigError) as err:
        load_inventory(write(tmp_path, "env:KW_AKID_MISSING"))
    assert "keys[0].access_key_id" in str(err.value) and "KW_AKID_MISSING" in str(err.value)
