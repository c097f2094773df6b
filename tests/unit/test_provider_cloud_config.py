"""Config validation of the cloud providers: a key or account missing what its provider needs is refused,
and the message names the field, the provider and where it is."""

from __future__ import annotations

import pytest

from keywatch.settings.loader import ConfigError, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[[keys]]\nname = "k"\nprovider = "aws_iam"\nsecret = "env:X"\n',
            "keys[0]: access_key_id is required for provider aws_iam",
        ),
        (
            '[[keys]]\nname = "k"\nprovider = "azure_openai"\nsecret = "env:X"\n',
            "keys[0]: endpoint is required for provider azure_openai",
        ),
        (
            '[[accounts]]\nname = "a"\nprovider = "azure_openai"\nsubscription_id = "s"\n',
            "accounts[0]: resource_group is required for provider azure_openai; "
            "account_name is required for provider azure_openai",
        ),
        (
            '[[keys]]\nname = "k"\nprovider = "aws_bedrock"\nsecret = "env:X"\nendpoint = "https://x"\n',
            "keys[0]: endpoint is not used by provider aws_bedrock",
        ),
    ],
)
def test_missing_or_foreign_provider_fields_are_named(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(text, "kw.toml")
    assert expected in str(err.value)


def test_aws_iam_and_bedrock_keys_may_share_one_aws_account() -> None:
    config = parse(
        '[[accounts]]\nname = "aws"\nprovider = "aws_iam"\naccess_key_id = "AKIAX"\nadmin_secret = "env:A"\n'
        '[[keys]]\nname = "b"\nprovider = "aws_bedrock"\nsecret = "env:B"\naccount = "aws"\nuser_name = "u"\n'
    )
    assert config.keys[0].account == "aws"
