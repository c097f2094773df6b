"""What a leak report is on its way in, and how it is matched against the managed keys.

A receiver turns what it was sent into `Incoming` (the secret, when it came with one, lives only in a
`Secret`); `KeyIndex` matches it by fingerprint against every managed key's secret. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from keywatch.domain import ManagedKey, Secret, mask
from keywatch.redact import redact_text

SHORT_FP = re.compile(r"^sha256:[0-9a-f]{12}$")
FULL_FP = re.compile(r"^(?:sha256:)?[0-9a-f]{64}$")
MAX_LOCATION = 1000


def full_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def clean_location(text: str | None, hidden: Iterable[str] = ()) -> str:
    """Where a secret was found, as stored and alerted: the reported secret (`hidden`), any secret keywatch
    knows and any provider key shape masked, bounded in size, control characters dropped."""
    if not text:
        return "unknown location"
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    for h in hidden:
        if h:
            text = text.replace(h, mask(h))
    return redact_text(text[:MAX_LOCATION], hidden)


@dataclass(frozen=True)
class Incoming:
    """One exposed secret as a receiver saw it. `secret` or `fingerprint` (ours, `sha256:` + 12 hex, or
    the full sha256 hex of the secret) says which; `confidence` is exact when the secret itself (or its
    digest) was reported, pattern when only a key format matched."""

    source: str
    location: str
    secret: Secret | None = None
    fingerprint: str | None = None
    confidence: str = "exact"
    delivery: str | None = None
    secret_type: str | None = None
    url: str | None = None
    validity: str | None = None
    publicly_leaked: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Matched already by who reports it (the scanner compares the secrets themselves): `key` is the managed
    # key, None for a secret keywatch does not manage; `masked_as` its masked form, the secret not carried.
    prematched: bool = False
    key: str | None = None
    masked_as: str | None = None

    def __repr__(self) -> str:
        return f"Incoming({self.source!r}, {self.shown_fingerprint})"

    @property
    def shown_fingerprint(self) -> str | None:
        if self.secret is not None:
            return self.secret.fingerprint
        if self.fingerprint and FULL_FP.match(self.fingerprint):
            return "sha256:" + self.fingerprint.removeprefix("sha256:")[:12]
        return self.fingerprint

    @property
    def masked(self) -> str | None:
        return self.secret.masked if self.secret is not None else self.masked_as


class KeyIndex:
    """Managed keys by the fingerprints of their secrets (the main secret and any extra ones, e.g. an AWS
    secret access key), short and full, so a report matches whichever form it carries."""

    def __init__(self, keys: Iterable[ManagedKey]) -> None:
        self._by: dict[str, str] = {}
        for k in keys:
            secrets = ([k.secret] if k.secret is not None else []) + list(k.extra_secrets.values())
            for s in secrets:
                self._by[s.fingerprint] = k.name
                self._by[full_digest(s.reveal())] = k.name
            aws_id = k.options.get("access_key_id")
            if isinstance(aws_id, str) and aws_id:
                self._by["id:" + aws_id] = k.name  # an AWS key id alone names its key (pattern-found ids)

    def match(self, incoming: Incoming) -> str | None:
        if incoming.prematched:
            return incoming.key
        if incoming.secret is not None:
            value = incoming.secret.reveal()
            return self._by.get(full_digest(value)) or self._by.get("id:" + value)
        fp = (incoming.fingerprint or "").strip().lower()
        if SHORT_FP.match(fp):
            return self._by.get(fp)
        if FULL_FP.match(fp):
            return self._by.get(fp.removeprefix("sha256:"))
        return None

    def __len__(self) -> int:
        return len(self._by)
