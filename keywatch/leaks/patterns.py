"""Shapes of provider keys keywatch does not manage, for `keywatch scan` (../shared leak-signals: gitleaks'
and trufflehog's rules, 2026).

A managed key is found by exact match (scanner.SecretMatcher); these rules are the second net, for keys
nobody told keywatch about. Each rule is a regular expression whose group `key` is the secret; a rule with
`near` only counts a match that has one of those words within NEAR characters (a DeepSeek key is an
`sk-` and 32 characters of [a-z0-9], which many things are). Every repetition is bounded, so a rule never
needs more than MAX_MATCH characters of context: the scanner's chunks overlap by that much.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NEAR = 160  # characters either side of a match where a `near` word must appear
MAX_MATCH = 320  # no rule matches more than this many characters


@dataclass(frozen=True)
class Rule:
    id: str
    provider: str
    title: str
    regex: re.Pattern[str]
    near: re.Pattern[str] | None = None
    ignore_suffix: str | None = None  # documentation examples (`AKIA...EXAMPLE`)
    # Literal text every match has, `offset` characters after the key's start: the scanner looks for it with
    # str.find and tries the regex only there (a find is many times faster than a regex over the whole text)
    anchors: tuple[str, ...] = ()
    offset: int = 0

    def accepts(self, key: str, text: str, start: int, end: int) -> bool:
        if self.ignore_suffix is not None and key.endswith(self.ignore_suffix):
            return False
        if self.near is None:
            return True
        return self.near.search(text, max(0, start - NEAR), min(len(text), end + NEAR)) is not None


_END = r"(?=[\x60'\"\s;,)\]}]|\\[nr]|$)"
_OPENAI_BODY = r"(?:[A-Za-z0-9_-]{74}|[A-Za-z0-9_-]{58})"

RULES: tuple[Rule, ...] = (
    Rule(
        "openai-api-key",
        "openai",
        "OpenAI API key (project, service account, admin or legacy)",
        re.compile(
            rf"\b(?P<key>sk-(?:proj|svcacct|admin)-{_OPENAI_BODY}T3BlbkFJ{_OPENAI_BODY}\b"
            rf"|sk-[a-zA-Z0-9]{{20}}T3BlbkFJ[a-zA-Z0-9]{{20}}){_END}"
        ),
        anchors=("sk-",),
    ),
    Rule(
        "openai-api-key-loose",
        "openai",
        'OpenAI API key (any form carrying the base64 of "OpenAI")',
        re.compile(
            r"\b(?P<key>sk-(?:(?:proj|svcacct|service)-[A-Za-z0-9_-]{1,150}|[a-zA-Z0-9]{1,150})"
            r"T3BlbkFJ[A-Za-z0-9_-]{1,150})\b"
        ),
        anchors=("sk-",),
    ),
    Rule(
        "anthropic-api-key",
        "anthropic",
        "Anthropic API key",
        re.compile(r"\b(?P<key>sk-ant-api03-[a-zA-Z0-9_\-]{93}AA)\b"),
        anchors=("sk-ant-api03-",),
    ),
    Rule(
        "anthropic-admin-key",
        "anthropic",
        "Anthropic Admin API key",
        re.compile(r"\b(?P<key>sk-ant-admin01-[a-zA-Z0-9_\-]{93}AA)\b"),
        anchors=("sk-ant-admin01-",),
    ),
    Rule(
        "aws-access-key-id",
        "aws",
        "AWS access key id",
        re.compile(r"\b(?P<key>(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})\b"),
        ignore_suffix="EXAMPLE",
        anchors=("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
    ),
    Rule(
        "openrouter-api-key",
        "openrouter",
        "OpenRouter API key",
        re.compile(r"\b(?P<key>sk-or-v1-[a-f0-9]{64})\b"),
        anchors=("sk-or-v1-",),
    ),
    Rule(
        "deepseek-api-key",
        "deepseek",
        "DeepSeek API key (an sk- key near the word deepseek)",
        re.compile(r"\b(?P<key>sk-[a-z0-9]{32})\b"),
        near=re.compile(r"(?i)deepseek"),
    ),
    Rule(
        "azure-openai-key",
        "azure_openai",
        "Azure OpenAI key (32 hex characters near an API key name or host)",
        re.compile(r"(?<![A-Za-z0-9])(?P<key>[a-fA-F0-9]{32})(?![A-Za-z0-9])"),
        near=re.compile(r"(?i)(?:api|openai)[_.-]?key|\.openai\.azure\.com"),
    ),
    Rule(
        "azure-openai-key-84",
        "azure_openai",
        "Azure OpenAI / AI Services key (84 characters, ...ACOG)",
        re.compile(
            r"(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9]{52}JQQJ99[A-Za-z0-9][A-L][A-Za-z0-9]{12}AAA[ABE]ACOG"
            r"[A-Za-z0-9]{4})(?![A-Za-z0-9])"
        ),
        anchors=("JQQJ99",),
        offset=52,
    ),
)

MANAGED_RULE_ID = "managed-key"
MANAGED_RULE_TITLE = "A key keywatch manages, found by exact match"


def rule(rule_id: str) -> Rule:
    for r in RULES:
        if r.id == rule_id:
            return r
    raise KeyError(rule_id)
