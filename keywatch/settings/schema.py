"""The configuration schema: one source of truth for validation, JSON Schema and the example file.

Every model forbids unknown fields, so a typo is an error that names the field, never a silent default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from keywatch.cluster.config import ClusterSettings
from keywatch.engine.policy_config import OutageSettings, PolicyConfig, SafetySettings, policy_problems
from keywatch.leaks.config import LeaksSettings
from keywatch.leaks.scan_config import ScanSettings
from keywatch.notify.config import AlertsConfig
from keywatch.pools.config import Pools
from keywatch.providers import registry
from keywatch.rotation.config import KeyRotationFields, RotationSettings
from keywatch.secretstores.config import SecretStoreSettings
from keywatch.settings.types import Duration, SecretRef, Strict
from keywatch.usage.config import Budgets, UsageSettings, check_references

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$"




def _same_family(a: str, b: str) -> bool:
    """Accounts of one family manage each other's keys (an AWS IAM account manages Bedrock API keys)."""
    try:
        family = registry.info(a).account_family
        return family is not None and family == registry.info(b).account_family
    except (KeyError, ValueError):  # an unknown provider: the schema error says so
        return False


# Validation context: the [[keys]] are validated apart (settings.loader, one at a time), so the checks that
# read every key (the policies' capabilities, the cross references) are the loader's to make.
KEYS_APART = {"keys_apart": True}


def _keys_apart(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("keys_apart"))


def _check_policies(policies: list[PolicyConfig], info: ValidationInfo) -> list[PolicyConfig]:
    """Every problem of the policies in one message: names, pools, and actions the selected keys'
    providers cannot do (the one place the schema reaches into a capability: engine.capabilities)."""
    from keywatch.engine.capabilities import errors_for_config

    problems = policy_problems(policies, info)
    if not _keys_apart(info):
        problems += errors_for_config(policies, info.data)
    if problems:
        raise ValueError("; ".join(problems))
    return policies


Policies = Annotated[list[PolicyConfig], AfterValidator(_check_policies)]

class DaemonSettings(Strict):
    database: str | None = Field(
        None,
        description="SQLAlchemy URL. Absent: $STATE_DIRECTORY/keywatch.db under systemd, else ./keywatch.db",
        json_schema_extra={"examples": ["sqlite:///keywatch.db", "postgresql+psycopg://user@host/keywatch"]},
    )
    listen: str = Field("127.0.0.1:9464", description="host:port of /metrics, /healthz, /readyz and the status page /")
    status_token: SecretRef | None = Field(
        None,
        description="Token the status page at / asks for (Bearer, or as the password of Basic auth); without "
        "it the page is served only when daemon.listen is a loopback address",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: JSON lines when stderr is not a terminal (journald), console otherwise"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_literal_secrets: bool = Field(
        False, description="Accept secrets written into this file (a warning is logged for each)"
    )
    metrics_per_key: Literal["all", "minimal", "none"] = Field(
        "all", description="Per-key series on /metrics: all (about 16 per key), minimal (the 5 the shipped rules "
        "and dashboard need: up, current health, admin state, last probe, info) or none (fleet aggregates only)"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:9464")
        check_listen_host(host)
        return v

    @field_validator("database")
    @classmethod
    def _database(cls, v: str | None) -> str | None:
        if v is not None:
            check_database_url(v)
        return v


_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_LISTEN_FIX = "expected an IP address or host name before the port, e.g. 127.0.0.1:9464, 0.0.0.0:9464 or [::1]:9464"


def check_listen_host(host: str) -> None:
    """The host part of `daemon.listen`: an IPv4 or IPv6 address ([::1]) or a host name. Raises ValueError.
    Whether a name resolves, and whether the port is free, is known only when the daemon binds."""
    if host.startswith("[") or host.endswith("]"):
        inner = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address in brackets; {_LISTEN_FIX}") from None
        return
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is not an IP address or host name; {_LISTEN_FIX}")
    if labels[-1].isdigit():  # 999.1.1.1, 10.0.0: looks like an IPv4 address but is none
        raise ValueError(f"{host!r} is not a valid IPv4 address (four numbers 0-255); {_LISTEN_FIX}")


DATABASE_FIX = "expected sqlite:///path/to/keywatch.db or postgresql+psycopg://user@host/keywatch"
DATABASE_BACKENDS = ("sqlite", "postgresql")


def check_database_url(url: str) -> None:
    """`daemon.database`: a URL keywatch's store can use, with its driver installed. Raises ValueError.
    The messages never repeat the URL (it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ValueError(f"is not a database URL; {DATABASE_FIX}") from None
    backend = parsed.get_backend_name()
    if backend not in DATABASE_BACKENDS:
        kind = backend if re.fullmatch(r"[A-Za-z0-9_+.-]{1,40}", backend) else "this"
        raise ValueError(f"{kind} databases are not supported (only SQLite and PostgreSQL); {DATABASE_FIX}")
    try:
        sql_dialect = parsed.get_dialect()
    except NoSuchModuleError:
        driver = parsed.drivername if re.fullmatch(r"[A-Za-z0-9_+.-]{1,60}", parsed.drivername) else "driver"
        raise ValueError(f"{driver}: unknown driver; {DATABASE_FIX}") from None
    if getattr(sql_dialect, "is_async", False):
        raise ValueError(f"{parsed.drivername}: async drivers are not supported; {DATABASE_FIX}")
    try:
        sql_dialect.import_dbapi()
    except ImportError as exc:
        hint = "pip install 'keywatch[postgres]'" if backend == "postgresql" else "install it"
        raise ValueError(
            f"{parsed.drivername}: the driver module {exc.name or 'for it'} is not installed ({hint}, or use "
            f"postgresql+psycopg://)"
        ) from None


class ProbeSettings(Strict):
    interval: Duration = Field("5m", description="Time between probe cycles")
    concurrency: int = Field(64, ge=1, le=10000, description="Probes in flight at once")
    timeout: Duration = Field("10s", description="Time one probe may take before it counts as unreachable")
    workers: int = Field(
        1, ge=1, le=32,
        description="Processes that probe (1: the daemon itself). More than one spreads the keys over worker "
        "processes, for fleets one core cannot probe within the interval; concurrency is shared among them",
    )
    jitter: float = Field(
        0.1, ge=0, le=0.5, description="Spread of each cycle's start, as a fraction of the interval"
    )
    spread: float = Field(
        0.5, ge=0, le=0.9, description="Share of the interval over which one cycle's probes are spread (each key "
        "at its own offset, with sub-second jitter) instead of one burst; 0: all at once"
    )
    completion_model: str = Field(
        "gpt-4o-mini", description="Model for probe = \"completion\" when the key sets none"
    )
    max_body: int = Field(
        1 << 20, ge=64 * 1024, le=1 << 30,
        description="Bytes of one provider answer, counted after decompression, read at most (1 MiB): a larger "
        "one (a decompression bomb, an endless stream) is a provider_error body_too_large",
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 1:
            raise ValueError("must be at least 1s")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not 0.1 <= v <= 300:
            raise ValueError("must be between 100ms and 5m")
        return v


def _known_provider(v: str) -> str:
    if v not in registry.PROVIDERS:
        raise ValueError(f"unknown provider {v!r}; expected one of: {', '.join(registry.names())}")
    return v


ProviderName = Annotated[
    str,
    AfterValidator(_known_provider),
    Field(json_schema_extra={"enum": registry.names()}, description="One of: " + ", ".join(registry.names())),
]

_OPTIONAL_KEY_FIELDS = (
    "base_url", "model", "organization", "project", "endpoint", "api_version", "region", "endpoint_url",
    "user_name", "access_key_id", "provider_key_id",
)
_OPTIONAL_ACCOUNT_FIELDS = (
    "admin_secret", "base_url", "subscription_id", "resource_group", "account_name", "credential",
    "tenant_id", "client_id", "client_secret", "region", "endpoint_url", "access_key_id",
)


def _check_provider_fields(
    model: BaseModel, provider: str, fields: tuple[str, ...], required: tuple[str, ...], allowed: tuple[str, ...]
) -> None:
    problems = []
    for f in required:
        if getattr(model, f) in (None, ""):
            problems.append(f"{f} is required for provider {provider}")
    for f in fields:
        if getattr(model, f) not in (None, "") and f not in allowed and f not in required:
            problems.append(f"{f} is not used by provider {provider}")
    if problems:
        raise ValueError("; ".join(problems))


class KeyConfig(KeyRotationFields):
    name: str = Field(pattern=NAME_PATTERN, description="Unique; letters, digits, - _ .")
    provider: ProviderName
    secret: SecretRef
    base_url: str | None = Field(None, description="Override the provider's API base URL")
    probe: Literal["models", "completion"] = Field(
        "models",
        description="models: zero tokens, proves the key authenticates; completion: 1 output token, also sees "
        "exhausted quota and models the key may not use",
    )
    model: str | None = Field(None, description="Model for probe = \"completion\"")
    labels: dict[Annotated[str, Field(pattern=LABEL_NAME_PATTERN)], str] = Field(
        default_factory=dict, description="Free labels (team, env ...) for grouping, budgets and pools"
    )
    account: str | None = Field(None, description="Name of the [[accounts]] entry that manages this key")
    enabled: bool = Field(True, description="false: keep in the inventory but do not probe")
    organization: str | None = Field(None, description="openai: OpenAI-Organization header")
    project: str | None = Field(None, description="openai: OpenAI-Project header")
    endpoint: str | None = Field(None, description="azure_openai: https://NAME.openai.azure.com")
    api_version: str | None = Field(None, description="azure_openai: data-plane api-version")
    region: str | None = Field(None, description="aws_*: region, default us-east-1")
    endpoint_url: str | None = Field(None, description="aws_*: endpoint override (e.g. a local test server)")
    user_name: str | None = Field(None, description="aws_*: IAM user that owns the key")
    access_key_id: str | None = Field(None, description="aws_iam: the access key id (the secret is the secret key)")
    provider_key_id: str | None = Field(
        None, description="The provider's id of this key (OpenRouter hash, Anthropic apikey_..., ...), if known"
    )

    @field_validator("base_url", "endpoint", "endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("expected an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _provider_fields(self) -> KeyConfig:
        info = registry.info(self.provider)
        _check_provider_fields(
            self, self.provider, _OPTIONAL_KEY_FIELDS, info.key_fields_required, info.key_fields_optional
        )
        if self.probe not in info.probe_modes:
            raise ValueError(
                f"probe = {self.probe!r} is not available for provider {self.provider} "
                f"(available: {', '.join(info.probe_modes)})"
            )
        return self


class AccountConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    provider: ProviderName
    admin_secret: SecretRef | None = Field(
        None, description="Admin or management key (OpenAI sk-admin-, Anthropic sk-ant-admin01-, OpenRouter "
        "management key; aws: the secret access key of the management credentials)"
    )
    base_url: str | None = None
    allow_destructive: bool = Field(
        False, description="Allow irreversible provider actions (delete, regenerate) for this account"
    )
    subscription_id: str | None = Field(None, description="azure_openai: subscription id")
    resource_group: str | None = Field(None, description="azure_openai: resource group")
    account_name: str | None = Field(None, description="azure_openai: Cognitive Services account name")
    credential: Literal["default", "client_secret"] | None = Field(
        None, description="azure_openai: DefaultAzureCredential (default) or a service principal"
    )
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretRef | None = None
    region: str | None = None
    endpoint_url: str | None = None
    access_key_id: str | None = Field(None, description="aws: access key id of the management credentials")

    @model_validator(mode="after")
    def _provider_fields(self) -> AccountConfig:
        info = registry.info(self.provider)
        _check_provider_fields(
            self, self.provider, _OPTIONAL_ACCOUNT_FIELDS, info.account_fields_required, info.account_fields_optional
        )
        return self


class Config(Strict):
    """The whole keywatch.toml."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    accounts: list[AccountConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    pools: Pools = Field(default_factory=list, description="Healthy keys published to Redis sets or files")
    outage: OutageSettings = Field(default_factory=OutageSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    policies: Policies = Field(default_factory=list, description="What to do about key states (after pools)")
    usage: UsageSettings = Field(default_factory=UsageSettings, description="Usage and cost pulls")
    budgets: Budgets = Field(default_factory=list, description="Spending limits per key, label, account or provider")
    rotation: RotationSettings = Field(default_factory=RotationSettings, description="Key rotation: timers, limits")
    secret_stores: SecretStoreSettings = Field(
        default_factory=SecretStoreSettings, description="How aws-sm: and azure-kv: references reach their stores"
    )
    scan: ScanSettings = Field(default_factory=ScanSettings, description="Paths scanned for keys on a schedule")
    leaks: LeaksSettings = Field(
        default_factory=LeaksSettings, description="Leak receivers and containment of exposed keys"
    )
    cluster: ClusterSettings = Field(
        default_factory=ClusterSettings, description="Several instances on one PostgreSQL database (docs/cluster.md)"
    )

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> Config:
        if _keys_apart(info):
            return self
        problems = reference_problems(self.keys, self.accounts, self.budgets)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def reference_problems(keys: Sequence[Any], accounts: Sequence[Any], budgets: Sequence[Any]) -> list[str]:
    """Names one section uses that another must define: duplicate key or account names, a key's unknown or
    mismatched account, budgets naming unknown keys or accounts. Works on the models and, for a file that
    does not validate, on its raw entries (objects with the same attributes), so `config validate` reports
    these in the same pass as the schema errors."""
    problems = []
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k.name in seen:
            problems.append(f"keys[{i}].name: {k.name!r} is already used by keys[{seen[k.name]}]")
        seen.setdefault(k.name, i)
    by_name = {a.name: a for a in accounts}
    if len(by_name) != len(accounts):
        problems.append("accounts: names must be unique")
    for i, k in enumerate(keys):
        if k.account is None:
            continue
        acct = by_name.get(k.account)
        if acct is None:
            known = ", ".join(str(n) for n in by_name) or "none"
            problems.append(f"keys[{i}].account: no account named {k.account!r} (known: {known})")
        elif acct.provider != k.provider and not _same_family(acct.provider, k.provider):
            problems.append(
                f"keys[{i}].account: account {k.account!r} is for provider {acct.provider}, not {k.provider}"
            )
    return problems + check_references(list(budgets), {k.name for k in keys}, set(by_name))


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "keywatch configuration"
    return schema
