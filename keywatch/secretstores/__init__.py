"""Secret stores as destinations (where applications read a key) and as sources (where keywatch reads one).

References:
- `file:/path`: a file holding only the secret; `.pending` and `.previous` beside it.
- `envfile:/path#VAR`: a systemd EnvironmentFile; VAR holds the secret.
- `aws-sm:<secret-id>[#json-field]`: AWS Secrets Manager, with its staging labels AWSPENDING, AWSCURRENT,
  AWSPREVIOUS (the protocol of its own rotation functions).
- `azure-kv:<vault-url>/<name>[#json-field]`: Azure Key Vault; every value a new version, old versions kept.

This package sits beside providers and store: it imports only the ground floor (domain).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from keywatch.secretstores.base import STAGES, BadReference, Destination, Stage, StoreUnavailable
from keywatch.secretstores.config import SecretStoreSettings

__all__ = [
    "DESTINATION_SCHEMES",
    "SOURCE_SCHEMES",
    "STAGES",
    "BadReference",
    "Destination",
    "SecretStoreSettings",
    "Stage",
    "StoreUnavailable",
    "open_destination",
]

DESTINATION_SCHEMES = ("file", "envfile", "aws-sm", "azure-kv")
# the schemes settings.secrets.resolve reads through this package (file: it reads itself)
SOURCE_SCHEMES = ("aws-sm", "azure-kv")

_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def scheme_of(ref: str) -> str | None:
    head, sep, _ = ref.partition(":")
    return head if sep and head in DESTINATION_SCHEMES else None


def open_destination(ref: str, settings: SecretStoreSettings | None = None, *, azure_credential: Any = None
                     ) -> Destination:
    """The destination for `ref`. Raises BadReference for a reference it cannot parse (nothing is contacted:
    a store that is down shows at the first call, as StoreUnavailable). `azure_credential`: an async token
    credential to use instead of the one [secret_stores.azure] describes (tests)."""
    settings = settings or SecretStoreSettings()
    scheme = scheme_of(ref)
    _, _, arg = ref.partition(":")
    if scheme in ("file", "envfile"):
        from keywatch.secretstores.files import EnvFileDestination, FileDestination

        path_text, _, var = arg.partition("#") if scheme == "envfile" else (arg, "", "")
        if not path_text.startswith("/"):
            raise BadReference(f"{ref}: expected an absolute path, e.g. {scheme}:/etc/myapp/key")
        path = Path(path_text)
        if path.name in ("", ".", ".."):
            raise BadReference(f"{ref}: the path must name a file")
        if scheme == "file":
            return FileDestination(ref, path)
        if not _ENV_VAR.match(var):
            raise BadReference(f"{ref}: expected envfile:/path#VAR with VAR a variable name, e.g. #OPENAI_API_KEY")
        return EnvFileDestination(ref, path, var)
    if scheme == "aws-sm":
        from keywatch.secretstores.aws import AwsSecretsManagerDestination, parse_aws_ref

        secret_id, field = parse_aws_ref(ref)
        return AwsSecretsManagerDestination(ref, secret_id, field, settings.aws)
    if scheme == "azure-kv":
        from keywatch.secretstores.azure import KeyVaultDestination, parse_azure_ref

        vault_url, name, field = parse_azure_ref(ref)
        return KeyVaultDestination(ref, vault_url, name, field, settings.azure, azure_credential)
    known = ", ".join(f"{s}:" for s in DESTINATION_SCHEMES)
    raise BadReference(f"{ref.partition(':')[0] or ref}: unknown destination scheme; expected one of {known}")
