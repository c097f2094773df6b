"""A policy action the selected keys' providers cannot do is caught when the config loads, not at run time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keywatch.cli import main
from keywatch.engine import capabilities
from keywatch.engine.policy import default_policies
from keywatch.engine.policy_config import SafetySettings
from keywatch.providers import registry
from keywatch.providers.base import Capability
from keywatch.settings.loader import ConfigError, load_inventory, parse

KEYS = """
[[keys]]
name = "ds-1"
provider = "deepseek"
secret = "env:KW_TEST_KEY"
labels = { team = "research" }

[[keys]]
name = "oa-prod"
provider = "openai"
secret = "env:KW_TEST_KEY"
labels = { team = "web" }

[[keys]]
name = "ant-prod"
provider = "anthropic"
secret = "env:KW_TEST_KEY"
labels = { team = "web" }
"""

REVOKE = '{ type = "revoke", allow_destructive = true }'


def _policy(when: str, actions: str, name: str = "p") -> str:
    return f'\n[[policies]]\nname = "{name}"\nwhen = {when}\nactions = {actions}\n'


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KW_TEST_KEY", "sk-test-0123456789abcdef")

    def _write(text: str) -> Path:
        path = tmp_path / "keywatch.toml"
        path.write_text(text)
        return path

    return _write


def test_revoke_on_deepseek_keys_is_refused_naming_policy_action_and_provider(write) -> None:
    text = KEYS + _policy('{ health = "healthy" }', '["alert"]', "fine") + _policy(
        '{ health = "invalid", provider = "deepseek" }', f'["alert", {REVOKE}]', "revoke-dead"
    )
    with pytest.raises(ConfigError) as info:
        load_inventory(write(text))
    [line] = [x for x in str(info.value).splitlines() if "revoke" in x]
    assert "policies: [1] (revoke-dead) actions[1] revoke:" in line
    assert ": deepseek cannot revoke a key through its API (deepseek can: probe)" in line
    assert "instead: disable with at_provider = false" in line
    assert "that can revoke (openai, azure_openai, anthropic," in line


def test_revoke_refused_through_labels_and_name_globs(write) -> None:
    by_label = KEYS + _policy('{ health = "invalid", labels = { team = "research" } }', f"[{REVOKE}]")
    by_glob = KEYS + _policy('{ health = "invalid", keys = ["ds-*"] }', f"[{REVOKE}]")
    for text in (by_label, by_glob):
        with pytest.raises(ConfigError, match=r"policies: \[0\] \(p\) actions\[0\] revoke: deepseek cannot"):
            parse(text)


def test_revoke_for_any_key_checks_every_configured_provider(write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(KEYS + _policy('{ compromised = true }', f"[{REVOKE}]"))
    assert main(["config", "validate", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "policies: [0] (p) actions[0] revoke: deepseek cannot revoke" in err


def test_revoke_on_providers_that_can_passes(write) -> None:
    text = KEYS + _policy('{ compromised = true, labels = { team = "web" } }', f"[{REVOKE}]")
    inv = load_inventory(write(text))
    assert not [w for w in inv.warnings if "policies[" in w]


def test_revoke_naming_a_provider_without_keys_yet_is_still_refused(write) -> None:
    with pytest.raises(ConfigError, match="moonshot cannot revoke"):
        parse(KEYS + _policy('{ compromised = true, provider = "moonshot" }', f"[{REVOKE}]"))


def test_disable_at_provider_on_openai_keys_warns_in_validate_and_check(
    write, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        KEYS + _policy('{ health = "invalid", provider = "openai" }', '[{ type = "disable", at_provider = true }]')
    )
    inv = load_inventory(path)
    [w] = [w for w in inv.warnings if "policies[" in w]
    assert w.startswith("policies[0] (p) actions[0] disable:")
    assert "openai has no reversible deactivate: the key leaves pools only" in w
    assert main(["config", "validate", "-c", str(path)]) == 0
    assert "openai has no reversible deactivate" in capsys.readouterr().err


def test_enable_at_provider_on_openai_keys_warns(write) -> None:
    path = write(
        KEYS
        + _policy('{ health = "healthy", keys = "oa-*", disabled_by = "keywatch" }',
                  '[{ type = "enable", at_provider = true }]')
    )
    [w] = [w for w in load_inventory(path).warnings if "policies[" in w]
    assert "policies[0] (p) actions[0] enable" in w and "openai has no reversible re-activate" in w


def test_disable_at_provider_on_anthropic_keys_neither_warns_nor_errors(write) -> None:
    path = write(
        KEYS + _policy('{ health = "invalid", provider = "anthropic" }', '[{ type = "disable", at_provider = true }]')
    )
    assert not [w for w in load_inventory(path).warnings if "policies[" in w]


def test_disable_without_written_at_provider_degrades_silently(write) -> None:
    """The default means "at the provider where reversible", as the built-in policies use it."""
    path = write(KEYS + _policy('{ health = "invalid" }', '["disable", "enable"]'))
    assert not [w for w in load_inventory(path).warnings if "policies[" in w]


def test_disabled_policies_and_disabled_keys_are_not_checked(write) -> None:
    off_policy = KEYS + _policy('{ compromised = true }', f"[{REVOKE}]") + "enabled = false\n"
    load_inventory(write(off_policy))
    off_key = KEYS.replace('labels = { team = "research" }', 'labels = { team = "research" }\nenabled = false')
    load_inventory(write(off_key + _policy('{ compromised = true }', f"[{REVOKE}]")))


@pytest.mark.parametrize("auto_enable", [True, False])
def test_built_in_policies_never_error_or_warn_on_any_provider(auto_enable: bool) -> None:
    class Key:
        def __init__(self, provider: str) -> None:
            self.name, self.provider, self.labels = f"k-{provider}", provider, {}

    keys = [Key(p) for p in registry.names()]
    errors, warnings = capabilities.check(default_policies(SafetySettings(auto_enable=auto_enable)), keys)
    assert (errors, warnings) == ([], [])


def test_capabilities_are_read_as_the_adapters_declare_them() -> None:
    assert Capability.REVOKE not in (capabilities.provider_capabilities("deepseek") or {Capability.REVOKE})
    assert Capability.DISABLE not in (capabilities.provider_capabilities("openai") or {Capability.DISABLE})
    assert {Capability.DISABLE, Capability.ENABLE, Capability.REVOKE} <= (
        capabilities.provider_capabilities("anthropic") or frozenset()
    )


def test_checking_aws_and_azure_policies_imports_no_cloud_sdk(tmp_path: Path) -> None:
    """Validating a config must work (and stay fast) on a machine without boto3 or the Azure SDK."""
    cfg = tmp_path / "k.toml"
    cfg.write_text(
        '[[keys]]\nname = "iam"\nprovider = "aws_iam"\nsecret = "env:KW_TEST_KEY"\naccess_key_id = "AKIAEXAMPLE"\n'
        '[[keys]]\nname = "az"\nprovider = "azure_openai"\nsecret = "env:KW_TEST_KEY"\n'
        'endpoint = "https://x.openai.azure.com"\n'
        + _policy('{ compromised = true }', f'["disable", {REVOKE}, {{ type = "enable", at_provider = true }}]')
    )
    code = (
        "import sys\n"
        "from keywatch.settings.loader import load_inventory\n"
        f"inv = load_inventory({str(cfg)!r})\n"
        "print([w for w in inv.warnings if 'policies' in w])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'azure')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"KW_TEST_KEY": "sk-test-0123456789abcdef", "PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    assert "azure_openai has no reversible re-activate" in out[0]
    assert out[1] == "[]"


def test_a_config_where_no_policy_alerts_is_warned_about(write) -> None:
    silent = load_inventory(write(KEYS + '\n[safety]\ndefault_policies = "never"\n'))
    assert any("no policy raises a key alert" in w for w in silent.warnings)
    written = _policy('{ health = "invalid" }', '["disable"]')
    assert any("no policy raises a key alert" in w for w in load_inventory(write(KEYS + written)).warnings)
    for fine in (KEYS, KEYS + _policy('{ health = "invalid" }', '["disable", "alert"]')):
        assert not any("no policy raises a key alert" in w for w in load_inventory(write(fine)).warnings)
