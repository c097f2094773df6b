"""Everything keywatch knows about each provider, in one place: one `ProviderInfo` per provider.

What config it needs, where its adapter lives, what it can do (`capabilities`, checked at config load and
shown in the capability matrix), why it cannot do the rest (`notes`), the least privilege its management
credential needs, the shapes of its keys (for masking and scanning), and how its usage is collected. No
other package tests a provider's name: they read these fields.

This module is plain data: validating a config or rendering the matrix never imports an adapter, so optional
SDKs (boto3, azure-*) stay optional and every machine gives the same answers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from keywatch.providers.base import ProviderAdapter


class Capability(StrEnum):
    PROBE = "probe"
    METADATA = "metadata"
    DISABLE = "disable"
    ENABLE = "enable"
    CREATE = "create"
    REVOKE = "revoke"
    USAGE = "usage"


# How a provider's keys rotate: a second credential by API, Azure's two regenerable slots, a person
# making the new key (keywatch verifies, promotes and retires the old), or not at all.
RotationMode = Literal["create", "slots", "assisted", "none"]
ROTATION_MODES: tuple[str, ...] = ("create", "slots", "assisted", "none")


@dataclass(frozen=True)
class ProviderInfo:
    name: str
    adapter: str  # "module:Class"
    title: str
    default_base_url: str | None
    key_fields_required: tuple[str, ...] = ()
    key_fields_optional: tuple[str, ...] = ()
    account_fields_required: tuple[str, ...] = ()
    account_fields_optional: tuple[str, ...] = ()
    extra: str | None = None  # pip extra that brings the SDK it needs
    probe_modes: tuple[str, ...] = ("models",)
    capabilities: frozenset[Capability] = frozenset({Capability.PROBE})
    notes: dict[str, str] = field(default_factory=dict)  # per capability: how, or why not
    least_privilege: str = ""
    # The public beginnings of its keys as providers show them (`sk-proj-...GDYA`), as regular expressions:
    # masked forms keep them.
    key_prefixes: tuple[str, ...] = ()
    # Regular expressions matching its keys in free text: log redaction and leak scanning.
    key_patterns: tuple[str, ...] = ()
    # Accounts of another provider of the same family can manage its keys (AWS IAM and Bedrock).
    account_family: str | None = None
    # Secret reference schemes resolved by the adapter from the key's account (`azure:key1`).
    secret_schemes: tuple[str, ...] = ()
    # Usage pulled per account: the collector module under keywatch.usage.collectors.
    account_usage: str | None = None
    # Pulled only for accounts named in usage.accounts (AWS IAM accounts often do not use Bedrock).
    account_usage_opt_in: bool = False
    # Usage the key reports about itself: its spend (OpenRouter) or its balance (DeepSeek, Moonshot).
    key_usage: Literal["spend", "balance"] | None = None
    # Rotation: the mode, and one line for the operator (the calls, or why a person is in the loop).
    rotation: RotationMode = "none"
    rotation_note: str = ""


# Providers whose keys exist only in their web console and report only a balance (DeepSeek, Moonshot).
_CONSOLE_ONLY = {
    "metadata": "no API to read key metadata",
    "disable": "no API: keys are managed only in the platform console",
    "enable": "no API: keys are managed only in the platform console",
    "create": "no API: keys are created only in the platform console",
    "revoke": "no API: keys are deleted only in the platform console",
    "usage": "no usage API; the balance is in the probe details",
}
_BALANCE_LEAST_PRIVILEGE = "none: no management API (the key itself reads the balance)"

PROVIDERS: dict[str, ProviderInfo] = {
    p.name: p
    for p in (
        ProviderInfo(
            "openai",
            "keywatch.providers.openai:OpenAIAdapter",
            "OpenAI",
            "https://api.openai.com/v1",
            key_fields_optional=("base_url", "model", "organization", "project", "provider_key_id"),
            account_fields_optional=("admin_secret", "base_url"),
            probe_modes=("models", "completion"),
            capabilities=frozenset({Capability.PROBE, Capability.METADATA, Capability.REVOKE, Capability.USAGE}),
            notes={
                "probe": "models: GET /models, zero tokens, cannot see exhausted quota; completion: 1 output token, "
                "also"
                " sees quota, billing and model access",
                "metadata": "Admin API: name, created_at, last_used_at, project, owner (projects and keys are paged)",
                "disable": "OpenAI has no reversible deactivate for API keys: the Admin API can only delete a key "
                "(revoke,"
                " destructive, needs allow_destructive on the account); narrowing a key's scopes is not a "
                "disable",
                "enable": "no API: a deleted key cannot come back",
                "create": "rotation creates a second key for the key's service account (Admin API); user-owned keys "
                "cannot be created by API",
                "revoke": "Admin API DELETE (irreversible; needs allow_destructive on the account; a service-account "
                "key "
                "is deleted with its service account)",
                "usage": "Admin API organization/usage/completions per key and organization/costs per project",
            },
            least_privilege="an Admin API key (sk-admin-...), which only an organization owner can create",
            key_prefixes=(r"sk-(?:proj|svcacct|admin|service)-", "sk-"),
            key_patterns=(
                "sk-(?:proj|svcacct|admin|service)-[A-Za-z0-9_\\-]{16,}",
                "sk-[A-Za-z0-9]{20,}T3BlbkFJ[A-Za-z0-9]{20,}",
                "\\bsk-[A-Za-z0-9_\\-]{20,}",
            ),
            account_usage="openai",
            rotation="create",
            rotation_note=(
                "service-account keys: Admin API POST .../service_accounts/{id}/api_keys, old key DELETE by id "
                "(the service account stays); user-owned keys cannot be created by API: assisted"
            ),
        ),
        ProviderInfo(
            "openai_compatible",
            "keywatch.providers.openai:OpenAICompatibleAdapter",
            "OpenAI-compatible (vLLM, Ollama, LM Studio, gateways)",
            None,
            key_fields_required=("base_url",),
            key_fields_optional=("model",),
            probe_modes=("models", "completion"),
            capabilities=frozenset({Capability.PROBE}),
            notes={
                "probe": "models: GET /models, zero tokens; completion: 1 output token",
                "metadata": "no standard API: depends on the server",
                "disable": "no standard API: depends on the server",
                "enable": "no standard API: depends on the server",
                "create": "no standard API: depends on the server",
                "revoke": "no standard API: depends on the server",
                "usage": "no standard API: depends on the server",
            },
            least_privilege="none: no management API",
            rotation="none",
            rotation_note="no standard API to create or retire keys",
        ),
        ProviderInfo(
            "azure_openai",
            "keywatch.providers.azure_openai:AzureOpenAIAdapter",
            "Azure OpenAI",
            None,
            key_fields_required=("endpoint",),
            key_fields_optional=("api_version", "model"),
            account_fields_required=("subscription_id", "resource_group", "account_name"),
            account_fields_optional=("credential", "base_url", "tenant_id", "client_id", "client_secret"),
            extra="azure",
            capabilities=frozenset({Capability.PROBE, Capability.METADATA, Capability.REVOKE, Capability.USAGE}),
            notes={
                "probe": "GET {endpoint}/openai/models, zero tokens; a 429 asking to retry after >= 1 day is "
                "quota_exhausted",
                "metadata": "ARM accounts.get (endpoint, local auth, provisioning state) and which slot (key1/key2) "
                "the key"
                " is",
                "disable": "Azure OpenAI has no per-key deactivation: an account's two keys stay valid until "
                "regenerated. "
                "Regenerating (revoke) stops a key for good and needs allow_destructive on the account",
                "enable": "Azure OpenAI has no per-key deactivation: an account's two keys stay valid until "
                "regenerated. "
                "Regenerating (revoke) stops a key for good and needs allow_destructive on the account",
                "create": "an account has exactly two keys; new values come from regenerating one",
                "revoke": "ARM regenerateKey on the key's slot (irreversible; needs allow_destructive)",
                "usage": "Azure Monitor token metrics and Cost Management daily cost, per account (not per key); ARM "
                "list_usages for quota",
            },
            least_privilege="Microsoft.CognitiveServices/accounts/read, .../listKeys/action, .../usages/read (+ "
            ".../regenerateKey/action for revoke), e.g. role 'Cognitive Services Contributor' on it",
            secret_schemes=("azure",),
            key_patterns=(r"\b[A-Za-z0-9]{52}JQQJ99[A-Za-z0-9][A-L][A-Za-z0-9]{12}AAA[A-Z]ACOG[A-Za-z0-9]{4}\b",),
            account_usage="azure",
            rotation="slots",
            rotation_note=(
                "two keys per account: consumers move to the slot not in use, which ARM regenerateKey renews; the"
                " old slot is regenerated to retire it"
            ),
        ),
        ProviderInfo(
            "anthropic",
            "keywatch.providers.anthropic:AnthropicAdapter",
            "Anthropic",
            "https://api.anthropic.com",
            key_fields_optional=("base_url", "provider_key_id"),
            account_fields_optional=("admin_secret", "base_url"),
            capabilities=frozenset(
                {
                    Capability.PROBE,
                    Capability.METADATA,
                    Capability.DISABLE,
                    Capability.ENABLE,
                    Capability.REVOKE,
                    Capability.USAGE,
                }
            ),
            notes={
                "probe": "GET /v1/models, zero tokens; proves authentication only; exhausted credit shows on billable "
                'calls (402, or 400 "credit balance is too low")',
                "metadata": "Admin API: name, status (active/inactive/archived/expired), created_at, workspace; no "
                "last-used time",
                "disable": "Admin API: status inactive (reversible)",
                "enable": "Admin API: status active",
                "create": "no Admin API endpoint creates API keys: a person creates one in the Console",
                "revoke": "Admin API: status archived (irreversible; needs allow_destructive on the account)",
                "usage": "Admin API usage_report/messages per key (tokens); cost_report per workspace only, in cents; "
                "no"
                " API for the prepaid credit balance",
            },
            least_privilege="Admin API key (sk-ant-admin01-...), which only an organization admin can create; "
            "Anthropic admin keys have no narrower scope",
            key_prefixes=(r"sk-ant-(?:api|admin)\d\d-",),
            key_patterns=("sk-ant-(?:api|admin)\\d\\d-[A-Za-z0-9_\\-]{20,}",),
            account_usage="anthropic",
            rotation="assisted",
            rotation_note=(
                "no API creates keys: a person creates one in the Console and puts it in the secret source; the "
                "old key goes inactive, then archived (allow_destructive), via the Admin API"
            ),
        ),
        ProviderInfo(
            "aws_iam",
            "keywatch.providers.aws.iam:AwsIamAdapter",
            "AWS IAM access key",
            None,
            key_fields_required=("access_key_id",),
            key_fields_optional=("region", "endpoint_url", "user_name"),
            account_fields_optional=(
                "region",
                "endpoint_url",
                "access_key_id",
                "admin_secret",
            ),
            extra="aws",
            capabilities=frozenset(
                {Capability.PROBE, Capability.METADATA, Capability.DISABLE, Capability.ENABLE, Capability.REVOKE}
            ),
            notes={
                "probe": "sts:GetCallerIdentity, free and needs no permission; with management credentials it also "
                "looks"
                " for the AWSCompromisedKeyQuarantine* policy on the key's user (compromise signal)",
                "metadata": "IAM list_access_keys (status, created), get_access_key_last_used (time, service)",
                "disable": "IAM update_access_key Status=Inactive (reversible)",
                "enable": "IAM update_access_key Status=Active",
                "create": "rotation creates the user's second access key (create_access_key; at most 2 per user)",
                "revoke": "IAM delete_access_key (irreversible; needs allow_destructive on the account)",
                "usage": "no per-key usage API; Bedrock spend is in CloudWatch/Cost Explorer per account",
            },
            least_privilege="iam:ListAccessKeys, iam:GetAccessKeyLastUsed, iam:UpdateAccessKey, "
            "iam:ListAttachedUserPolicies (+ iam:DeleteAccessKey for revoke, + iam:CreateAccessKey and "
            "iam:DeleteAccessKey for rotation) on the users whose keys are watched",
            key_prefixes=("AKIA", "ASIA", "ABIA", "ACCA"),
            key_patterns=(
                r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
                r"(?i)(?<=aws_secret_access_key)[\"'=:\s]+[A-Za-z0-9/+]{40}",
            ),
            account_family="aws",
            account_usage="aws",
            account_usage_opt_in=True,
            rotation="create",
            rotation_note=(
                "IAM create_access_key (at most 2 per user), old key update_access_key Inactive, then "
                "delete_access_key"
            ),
        ),
        ProviderInfo(
            "aws_bedrock",
            "keywatch.providers.aws.bedrock:AwsBedrockAdapter",
            "Amazon Bedrock API key",
            None,
            key_fields_optional=("region", "endpoint_url", "user_name", "provider_key_id", "base_url"),
            account_fields_optional=(
                "region",
                "endpoint_url",
                "access_key_id",
                "admin_secret",
            ),
            extra="aws",
            capabilities=frozenset(
                {Capability.PROBE, Capability.METADATA, Capability.DISABLE, Capability.ENABLE, Capability.REVOKE}
            ),
            notes={
                "probe": "GET bedrock /foundation-models as bearer token, zero tokens; 403 'Authentication "
                "failed'/'Invalid API Key' is invalid, AccessDeniedException is forbidden",
                "metadata": "IAM list_service_specific_credentials (status, created, expires); needs user_name",
                "disable": "IAM update_service_specific_credential Status=Inactive (reversible)",
                "enable": "IAM update_service_specific_credential Status=Active",
                "create": "rotation creates the user's second Bedrock key (create_service_specific_credential; "
                "2 per user)",
                "revoke": "IAM delete_service_specific_credential (irreversible; needs allow_destructive)",
                "usage": "CloudWatch AWS/Bedrock is per model and account, not per API key",
            },
            least_privilege="iam:ListServiceSpecificCredentials, iam:UpdateServiceSpecificCredential (+ "
            "iam:DeleteServiceSpecificCredential for revoke, + iam:CreateServiceSpecificCredential and "
            "iam:DeleteServiceSpecificCredential for rotation) on the keys' users",
            key_patterns=("\\bABSK[A-Za-z0-9+/=]{40,}",),
            account_family="aws",
            account_usage="aws",
            rotation="create",
            rotation_note=(
                "IAM create_service_specific_credential for bedrock.amazonaws.com (at most 2 per user), old one "
                "Inactive, then deleted"
            ),
        ),
        ProviderInfo(
            "openrouter",
            "keywatch.providers.openrouter:OpenRouterAdapter",
            "OpenRouter",
            "https://openrouter.ai/api/v1",
            key_fields_optional=("base_url", "provider_key_id"),
            account_fields_optional=("admin_secret", "base_url"),
            capabilities=frozenset(
                {
                    Capability.PROBE,
                    Capability.METADATA,
                    Capability.DISABLE,
                    Capability.ENABLE,
                    Capability.CREATE,
                    Capability.REVOKE,
                    Capability.USAGE,
                }
            ),
            notes={
                "probe": "GET /key, zero tokens; also reports usage, limit and limit_remaining (USD); limit_remaining "
                "<="
                " 0 is quota_exhausted",
                "metadata": "management key: GET /keys/{hash}: name, disabled, created_at, usage and limit; no "
                "last-used time",
                "disable": 'management key: PATCH /keys/{hash} {"disabled": true} (reversible)',
                "enable": 'management key: PATCH /keys/{hash} {"disabled": false}',
                "create": "management key: POST /keys (same limit as the key it replaces)",
                "revoke": "management key: DELETE /keys/{hash} (irreversible; needs allow_destructive on the account)",
                "usage": "per key from GET /key (usage, daily/weekly/monthly, USD); account credits from GET /credits",
            },
            least_privilege="a management (provisioning) key; it cannot call models, and OpenRouter offers no "
            "narrower role",
            key_prefixes=("sk-or-v1-",),
            key_patterns=("sk-or-v1-[a-f0-9]{32,}",),
            key_usage="spend",
            rotation="create",
            rotation_note=(
                "management key: POST /keys with the old key's name and limit, PATCH disabled on the old, DELETE "
                "after grace"
            ),
        ),
        ProviderInfo(
            "deepseek",
            "keywatch.providers.balance:DeepSeekAdapter",
            "DeepSeek",
            "https://api.deepseek.com",
            key_fields_optional=("base_url",),
            capabilities=frozenset({Capability.PROBE}),
            notes={
                "probe": "GET /user/balance, zero tokens; is_available false or a balance <= 0 is quota_exhausted; "
                "balances (CNY/USD) in the probe details",
                **_CONSOLE_ONLY,
            },
            least_privilege=_BALANCE_LEAST_PRIVILEGE,
            key_prefixes=("sk-",),
            key_usage="balance",
            rotation="assisted",
            rotation_note=(
                "no API at all: a person creates and deletes keys in the console; keywatch verifies and promotes "
                "the new value"
            ),
        ),
        ProviderInfo(
            "moonshot",
            "keywatch.providers.balance:MoonshotAdapter",
            "Moonshot (Kimi)",
            "https://api.moonshot.ai/v1",
            key_fields_optional=("base_url",),
            capabilities=frozenset({Capability.PROBE}),
            notes={
                "probe": "GET /users/me/balance, zero tokens; available_balance <= 0 is quota_exhausted; balances in "
                "the probe details (CNY on .cn, USD on .ai)",
                **_CONSOLE_ONLY,
            },
            least_privilege=_BALANCE_LEAST_PRIVILEGE,
            key_prefixes=("sk-",),
            key_usage="balance",
            rotation="assisted",
            rotation_note=(
                "no API at all: a person creates and deletes keys in the console; keywatch verifies and promotes "
                "the new value"
            ),
        ),
    )
}


def names() -> list[str]:
    return list(PROVIDERS)


def info(name: str) -> ProviderInfo:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}") from None


def adapter_class(name: str) -> type[ProviderAdapter]:
    module_name, _, cls_name = info(name).adapter.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = info(name).extra
        hint = f" (install keywatch[{extra}])" if extra else ""
        raise ImportError(f"provider {name} needs {exc.name}{hint}") from exc
    return getattr(module, cls_name)


def capabilities(name: str) -> frozenset[Capability]:
    return info(name).capabilities


def key_prefixes() -> tuple[str, ...]:
    """Every provider's public key prefixes, the most specific first (the masking rule takes the first match:
    `sk-proj-` before `sk-`)."""
    return tuple(sorted({p for i in PROVIDERS.values() for p in i.key_prefixes}, key=len, reverse=True))


def key_patterns() -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for i in PROVIDERS.values() for p in i.key_patterns))


def _publish_key_shapes() -> None:
    """Masking and redaction, on the ground floor, learn the key shapes from here (the one place that knows)."""
    from keywatch import domain, redact

    domain.use_key_prefixes(key_prefixes())
    redact.use_key_patterns(key_patterns())


_publish_key_shapes()
