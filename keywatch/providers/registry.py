"""The explicit list of providers: what config each needs, and where its adapter lives.

Adapters are imported only when a configured key needs them, so optional SDKs (boto3, azure-*)
stay optional.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from keywatch.providers.base import ProviderAdapter


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
        ),
        ProviderInfo(
            "openai_compatible",
            "keywatch.providers.openai:OpenAICompatibleAdapter",
            "OpenAI-compatible (vLLM, Ollama, LM Studio, gateways)",
            None,
            key_fields_required=("base_url",),
            key_fields_optional=("model",),
            probe_modes=("models", "completion"),
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
        ),
        ProviderInfo(
            "anthropic",
            "keywatch.providers.anthropic:AnthropicAdapter",
            "Anthropic",
            "https://api.anthropic.com",
            key_fields_optional=("base_url", "provider_key_id"),
            account_fields_optional=("admin_secret", "base_url"),
        ),
        ProviderInfo(
            "aws_iam",
            "keywatch.providers.aws:AwsIamAdapter",
            "AWS IAM access key",
            None,
            key_fields_required=("access_key_id",),
            key_fields_optional=("region", "endpoint_url", "user_name"),
            account_fields_optional=(
                "region", "endpoint_url", "access_key_id", "admin_secret",
            ),
            extra="aws",
        ),
        ProviderInfo(
            "aws_bedrock",
            "keywatch.providers.aws:AwsBedrockAdapter",
            "Amazon Bedrock API key",
            None,
            key_fields_optional=("region", "endpoint_url", "user_name", "provider_key_id", "base_url"),
            account_fields_optional=(
                "region", "endpoint_url", "access_key_id", "admin_secret",
            ),
            extra="aws",
        ),
        ProviderInfo(
            "openrouter",
            "keywatch.providers.openrouter:OpenRouterAdapter",
            "OpenRouter",
            "https://openrouter.ai/api/v1",
            key_fields_optional=("base_url", "provider_key_id"),
            account_fields_optional=("admin_secret", "base_url"),
        ),
        ProviderInfo(
            "deepseek",
            "keywatch.providers.balance:DeepSeekAdapter",
            "DeepSeek",
            "https://api.deepseek.com",
            key_fields_optional=("base_url",),
        ),
        ProviderInfo(
            "moonshot",
            "keywatch.providers.balance:MoonshotAdapter",
            "Moonshot (Kimi)",
            "https://api.moonshot.ai/v1",
            key_fields_optional=("base_url",),
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
