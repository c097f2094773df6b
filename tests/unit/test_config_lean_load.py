"""Loading the inventory one [[keys]] entry at a time: the same inventory and the same errors as validating the
whole file at once, without every key's model in memory together."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from keywatch.settings import loader
from keywatch.settings.loader import ConfigError, load_inventory, load_settings

CONFIG = """
[daemon]
allow_literal_secrets = true

[[accounts]]
name = "oa-admin"
provider = "openai"
admin_secret = "env:KW_LEAN_ADMIN"

[[keys]]
name = "oa-1"
provider = "openai"
secret = "env:KW_LEAN_KEY"
account = "oa-admin"
labels = { team = "search", env = "prod" }
organization = "org-1"
rotate_every = "30d"

[[keys]]
name = "oa-2"
provider = "openai"
secret = "sk-proj-literalsecretliteralsecret0000"
labels = { team = "search", env = "prod" }
probe = "completion"
model = "gpt-4o-mini"

[[keys]]
name = "old"
provider = "openai"
secret = "file:/nonexistent/gone"
enabled = false

[[keys]]
name = "ds-1"
provider = "deepseek"
secret = "env:KW_LEAN_KEY"
labels = { team = "ads" }

[[budgets]]
name = "oa-1-daily"
key = "oa-1"
period = "daily"
usd = "10"

[[policies]]
name = "disable-invalid"
when = { health = ["invalid"], labels = { team = "search" } }
actions = ["disable", "alert"]
"""


def fields(inventory) -> list[tuple]:
    return [(k.name, k.provider, k.secret.reveal() if k.secret else None, k.secret_ref, k.base_url, k.probe,
             k.model, dict(k.labels), k.account, dict(k.options)) for k in inventory.keys]


def whole_file(path: Path, monkeypatch: pytest.MonkeyPatch):
    """load_inventory as it is when the file is validated at once (the path taken when anything is wrong)."""
    with monkeypatch.context() as m:
        m.setattr(loader, "_lean", lambda *a, **kw: None)
        return load_inventory(path)


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KW_LEAN_KEY", "sk-proj-0123456789abcdef0123456789")
    monkeypatch.setenv("KW_LEAN_ADMIN", "sk-admin-0123456789abcdef0123456789")

    def _write(text: str) -> Path:
        path = tmp_path / "keywatch.toml"
        path.write_text(text)
        return path

    return _write


def test_key_by_key_gives_the_inventory_the_whole_file_gives(write, monkeypatch) -> None:
    path = write(CONFIG)
    lean, whole = load_inventory(path), whole_file(path, monkeypatch)
    assert fields(lean) == fields(whole) and [k.name for k in lean.keys] == ["oa-1", "oa-2", "ds-1"]
    assert lean.warnings == whole.warnings and any("oa-2" in w for w in lean.warnings)  # the literal secret
    assert lean.accounts == whole.accounts
    assert lean.config == whole.config and lean.config.keys == []
    assert load_settings(path) == whole.config


@pytest.mark.parametrize(("extra", "expected"), [
    # a check that reads every key, made after the keys: the whole file's report, in its words
    ('[[budgets]]\nname = "b"\nkey = "nope"\nperiod = "daily"\nusd = "1"\n', "budgets[1].key"),
    ('[[keys]]\nname = "oa-1"\nprovider = "openai"\nsecret = "env:KW_LEAN_KEY"\n', "is already used by keys[0]"),
    ('[[keys]]\nname = "x"\nprovider = "openai"\nsecret = "env:KW_LEAN_KEY"\naccount = "nope"\n', "keys[4].account"),
    ('[[policies]]\nname = "rv"\nwhen = { provider = ["deepseek"] }\n'
     'actions = [{ type = "revoke", allow_destructive = true }]\n', "policies: [1] (rv) actions[0] revoke"),
    ('[[keys]]\nname = "y"\nprovider = "openai"\nsecret = "env:KW_LEAN_MISSING"\n', "keys[4].secret"),
])
def test_a_problem_found_after_the_keys_is_reported_as_the_whole_file_reports_it(write, monkeypatch, extra,
                                                                                 expected) -> None:
    path = write(CONFIG + extra)
    with pytest.raises(ConfigError) as lean:
        load_inventory(path)
    with pytest.raises(ConfigError) as whole:
        whole_file(path, monkeypatch)
    assert lean.value.problems == whole.value.problems
    assert any(expected in p for p in lean.value.problems), lean.value.problems


def test_a_fleet_is_loaded_without_every_key_model_at_once(write, monkeypatch) -> None:
    lines = [CONFIG]
    for i in range(3000):
        lines += ["[[keys]]", f'name = "k{i}"', 'provider = "openai"', 'secret = "env:KW_LEAN_KEY"',
                  f'labels = {{ team = "t{i % 7}" }}']
    path = write("\n".join(lines))

    def peak(load_it) -> int:
        tracemalloc.start()
        try:
            inventory = load_it()
            assert len(inventory.keys) == 3003
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole = peak(lambda: whole_file(path, monkeypatch))
    lean = peak(lambda: load_inventory(path))
    assert lean * 2 < whole, (lean, whole)  # each model (about 1.9 KB) lets go once its key is made


def test_a_fleet_with_secrets_that_do_not_resolve_is_refused_reading_each_secret_once(write, monkeypatch) -> None:
    """Every reference that does not resolve is named, as the whole file names them, and no secret is read
    twice for it (a secret store's are network calls)."""
    from keywatch.settings import secrets

    monkeypatch.setenv("KW_LEAN_A", "sk-proj-aaaaaaaaaaaaaaaaaaaaaaaaaaaa")
    monkeypatch.setenv("KW_LEAN_B", "sk-proj-bbbbbbbbbbbbbbbbbbbbbbbbbbbb")
    path = write("".join(f'[[keys]]\nname = "k{i}"\nprovider = "openai"\nsecret = "env:KW_LEAN_{ref}"\n'
                         for i, ref in enumerate(["A", "MISSING_0", "B", "MISSING_1"])))
    reads: list[str] = []
    real = secrets.resolve

    def counted(ref, *args, **kwargs):
        reads.append(ref)
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(secrets, "resolve", counted)
    with pytest.raises(ConfigError) as lean:
        load_inventory(path)
    assert sorted(reads) == ["env:KW_LEAN_A", "env:KW_LEAN_B", "env:KW_LEAN_MISSING_0", "env:KW_LEAN_MISSING_1"]
    with pytest.raises(ConfigError) as whole:
        whole_file(path, monkeypatch)
    assert lean.value.problems == whole.value.problems
    assert [p.split(":")[0] for p in lean.value.problems] == ["keys[1].secret", "keys[3].secret"]
