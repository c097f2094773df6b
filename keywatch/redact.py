"""Masking of secrets in any text that leaves the process (logs, errors, alerts, CLI output).

Two nets: the exact secrets keywatch loaded (known precisely, whatever their format), and anything
shaped like a provider key (for secrets keywatch never loaded, e.g. echoed back in an error body).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from keywatch.domain import mask

# Shapes of secrets in free text: each provider's key patterns (ProviderInfo.key_patterns, set by
# providers/registry.py when keywatch is imported) and a bearer token of any kind.
GENERIC_PATTERNS: tuple[re.Pattern[str], ...] = (re.compile(r"(?i)bearer\s+[A-Za-z0-9._\-+/=]{16,}"),)
KEY_PATTERNS: tuple[re.Pattern[str], ...] = GENERIC_PATTERNS


def use_key_patterns(patterns: Iterable[str]) -> None:
    global KEY_PATTERNS
    KEY_PATTERNS = tuple(re.compile(p) for p in patterns) + GENERIC_PATTERNS


class SecretRegistry:
    """The set of secrets currently loaded; the log processor masks each of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None

    def replace(self, secrets: Iterable[str]) -> None:
        values = frozenset(s for s in secrets if s and len(s) >= 6)
        pattern = (
            re.compile("|".join(re.escape(s) for s in sorted(values, key=len, reverse=True))) if values else None
        )
        with self._lock:
            self._secrets, self._pattern = values, pattern

    def add(self, secrets: Iterable[str]) -> None:
        self.replace(set(self._secrets) | set(secrets))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(lambda m: mask(m.group(0)), text)
        return redact_shapes(text)


REGISTRY = SecretRegistry()


def redact_shapes(text: str) -> str:
    for pattern in KEY_PATTERNS:
        text = pattern.sub(_mask_match, text)
    return text


def _mask_match(m: re.Match[str]) -> str:
    value = m.group(0)
    if value.lower().startswith("bearer"):
        return "Bearer ****"
    if "..." in value:
        return value
    return mask(value)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for s in secrets:
        if s and len(s) >= 6 and s in text:
            text = text.replace(s, mask(s))
    return REGISTRY.redact(text)
