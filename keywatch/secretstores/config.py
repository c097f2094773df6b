"""The `[secret_stores]` config section: how keywatch reaches AWS Secrets Manager and Azure Key Vault.

Only ground-floor imports (this package sits beside providers and store, below settings): the section is
plain pydantic with the same strictness as every other section (unknown fields are errors)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AwsStoreSettings(_Strict):
    region: str | None = Field(None, description="Region of the secrets (default: the SDK's, else us-east-1)")
    endpoint_url: str | None = Field(None, description="Endpoint override (a VPC endpoint, a local test server)")
    profile: str | None = Field(None, description="Named profile from ~/.aws (default: the SDK's credential chain)")
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds one call may take (connect and read)")

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("expected an http(s) URL")
        return v.rstrip("/") if v else v


class AzureStoreSettings(_Strict):
    credential: Literal["default", "client_secret"] = Field(
        "default", description="DefaultAzureCredential (managed identity, environment, CLI) or a service principal"
    )
    tenant_id: str | None = Field(None, description="client_secret: the tenant of the service principal")
    client_id: str | None = Field(None, description="client_secret: the application (client) id")
    client_secret: str | None = Field(
        None, description="client_secret: a reference to the secret (env:NAME, file:/path, credential:NAME)"
    )
    authority: str | None = Field(None, description="Entra ID authority host (sovereign clouds); default public")
    ca_bundle: str | None = Field(None, description="PEM file of CAs to trust for the vault (private CA, tests)")
    verify_challenge_resource: bool = Field(
        True, description="Check that the vault's auth challenge names a Key Vault resource (false only in tests)"
    )
    timeout: float = Field(10.0, gt=0, le=300, description="Seconds one call may take")

    @model_validator(mode="after")
    def _service_principal(self) -> AzureStoreSettings:
        if self.credential == "client_secret":
            missing = [f for f in ("tenant_id", "client_id", "client_secret") if not getattr(self, f)]
            if missing:
                raise ValueError(f"credential = \"client_secret\" needs {', '.join(missing)}")
        return self


class SecretStoreSettings(_Strict):
    """`[secret_stores]`: shared by every aws-sm: and azure-kv: reference (sources and destinations)."""

    aws: AwsStoreSettings = Field(default_factory=AwsStoreSettings)
    azure: AzureStoreSettings = Field(default_factory=AzureStoreSettings)
