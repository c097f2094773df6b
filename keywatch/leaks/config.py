"""The `[leaks]` section: the leak receivers on the daemon's HTTP server and the containment ceiling.

Each receiver is off until its table is written (and its secret configured). It imports only the ground
floor (settings.types), like every capability's config module: settings.schema assembles it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from keywatch.settings.types import Duration, SecretRef, Strict


def _path(v: str) -> str:
    if not v.startswith("/") or "{" in v or " " in v or v.rstrip("/") in ("", "/metrics", "/healthz", "/readyz"):
        raise ValueError(f"{v!r}: a path of its own, starting with / (not /, /metrics, /healthz or /readyz)")
    return v


Path = Annotated[str, AfterValidator(_path)]


class GithubWebhook(Strict):
    """GitHub `secret_scanning_alert` webhooks (repository, organization or app)."""

    path: Path = Field("/hooks/github/secret-scanning", description="Where GitHub POSTs the deliveries")
    webhook_secret: SecretRef = Field(description="The webhook's secret (X-Hub-Signature-256 is checked with it)")
    token: SecretRef | None = Field(
        None,
        description="GitHub token that may read secret scanning alerts (the alert's secret is fetched with it); "
        "without it an alert cannot be matched to a key and is recorded as unmatched",
    )
    api_url: str = Field("https://api.github.com", description="GitHub REST API (GitHub Enterprise: its /api/v3)")


class PartnerKey(Strict):
    key_identifier: str = Field(description="Github-Public-Key-Identifier of the key")
    key: str = Field(description="The PEM public key (ECDSA P-256)")


class GithubPartner(Strict):
    """The GitHub secret scanning partner format (an endpoint of your own that GitHub reports tokens to)."""

    path: Path = Field("/hooks/github/partner", description="Where GitHub POSTs the token matches")
    public_keys: list[PartnerKey] = Field(
        default_factory=list,
        description="GitHub's signing keys; when empty they are fetched from public_keys_url and cached",
    )
    public_keys_url: str = Field(
        "https://api.github.com/meta/public_keys/secret_scanning", description="Where GitHub publishes its keys"
    )
    keys_cache: Duration = Field("1h", description="How long fetched keys are used before they are fetched again")


class GenericReceiver(Strict):
    """`POST /api/v1/leaks` for other scanners (TruffleHog, gitleaks, detect-secrets in CI, a SIEM)."""

    path: Path = Field("/api/v1/leaks", description="Where reports are POSTed")
    token: SecretRef | None = Field(None, description="Bearer token a report must carry (Authorization: Bearer)")
    hmac_secret: SecretRef | None = Field(
        None, description="Or: HMAC-SHA256 key; X-Keywatch-Signature-256: sha256=<hex over the raw body>"
    )

    @model_validator(mode="after")
    def _authenticated(self) -> GenericReceiver:
        if self.token is None and self.hmac_secret is None:
            raise ValueError("set token or hmac_secret (or both): the receiver refuses unauthenticated reports")
        return self


class LeaksSettings(Strict):
    github: GithubWebhook | None = Field(None, description="GitHub secret_scanning_alert webhooks (off when absent)")
    partner: GithubPartner | None = Field(None, description="GitHub secret scanning partner format (off when absent)")
    generic: GenericReceiver | None = Field(None, description="Generic leak reports (off when absent)")
    max_body: int = Field(
        262144, ge=1024, le=16 * 1024 * 1024, description="Largest request body a receiver reads (bytes); more is 413"
    )
    pattern_limit_per_hour: int = Field(
        3,
        ge=0,
        description="Containments an hour from pattern-only signals (a key format matched, not the key itself); "
        "exact matches are never limited; every containment held back raises a critical alert",
    )
    rotate: bool = Field(True, description="Start a rotation of a contained key where rotation is configured")
    revoke_without_disable: bool = Field(
        True,
        description="Revoke a contained key whose provider cannot deactivate it, where the account sets "
        "allow_destructive",
    )
    provider_check_interval: Duration = Field(
        "10m",
        description="How often key statuses are read at OpenAI, Anthropic and OpenRouter (a key gone or "
        "deactivated there without keywatch is a compromise signal); 0 turns it off",
    )
    aws_health_accounts: list[str] = Field(
        default_factory=list,
        description="aws_iam accounts whose AWS Health AWS_RISK_CREDENTIALS_EXPOSED events are read "
        "(needs a Business or Enterprise support plan)",
    )
    aws_health_endpoint_url: str | None = Field(None, description="AWS Health endpoint override (tests)")
    forget_deliveries_after: Duration = Field(
        "30d", description="How long delivery ids are remembered to refuse replays"
    )


def secret_references(s: LeaksSettings) -> list[tuple[str, str]]:
    """The receivers' secret references with the setting each is at, for the daemon (resolved at start) and
    `keywatch config validate` (resolved the same way, so a reference that would refuse the start is
    reported before)."""
    out: list[tuple[str, str | None]] = []
    if s.github is not None:
        out += [("leaks.github.webhook_secret", s.github.webhook_secret), ("leaks.github.token", s.github.token)]
    if s.generic is not None:
        out += [("leaks.generic.token", s.generic.token), ("leaks.generic.hmac_secret", s.generic.hmac_secret)]
    return [(where, ref) for where, ref in out if ref is not None]


def reference_problem(where: str, ref: str, error: object) -> str:
    """A reference that does not resolve, as the start and `config validate` say it: the setting and the
    reference (`env:NAME`, `file:/path` ...), never a value (a literal is not shown)."""
    from keywatch.settings.secrets import is_reference

    shown = ref if is_reference(ref) else "a literal value"
    hint = ("; or, to keep literal secrets in this file (not recommended), set daemon.allow_literal_secrets = true"
            if "literal secret" in str(error) else "")
    return f"{where} ({shown}): {error}{hint}"
