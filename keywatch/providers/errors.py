"""Shared pieces of error classification and header parsing.

Each provider has its own table; what they share is the rule that only an answer which is about the
key (401, 402, 403, quota) may blame the key. 5xx, timeouts and refused connections never do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2

from keywatch.domain import Health, RateLimit
from keywatch.durations import parse_duration


@dataclass(frozen=True)
class Refusal:
    """What a provider's error answer means, read with that provider's own table.

    A code or message left None falls back to the HTTP status (`http_429`) and its reason phrase.
    """

    health: Health
    code: str | None = None
    message: str | None = None
    ratelimit: RateLimit | None = None
    retry_after_seconds: float | None = None


class UnreadableBody(httpx2.TransportError):
    """An answer keywatch stopped reading (providers.transport): the provider's fault, never the key's."""

    code = "unreadable_body"


class BodyTooLarge(UnreadableBody):
    """The answer is (or decodes to) more than the cap: a bomb, an endless stream, or not a provider."""

    code = "body_too_large"


class UndecodableBody(UnreadableBody):
    """The answer is in an encoding keywatch did not ask for, or its compressed stream is corrupt."""

    code = "bad_encoding"


def classify_transport_error(exc: BaseException) -> tuple[Health, str]:
    """A request that got no usable HTTP answer: the network or the provider, never the key."""
    if isinstance(exc, UnreadableBody):
        return Health.PROVIDER_ERROR, exc.code
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return Health.UNREACHABLE, "timeout"
    if isinstance(exc, httpx2.ConnectError | ConnectionError | OSError):
        return Health.UNREACHABLE, "connect_error"
    return Health.PROVIDER_ERROR, type(exc).__name__


def classify_status(status: int) -> Health:
    """The fallback for answers a provider table does not name."""
    if 200 <= status < 300:
        return Health.HEALTHY
    if status == 401:
        return Health.INVALID
    if status == 402:
        return Health.QUOTA_EXHAUSTED
    if status == 403:
        return Health.FORBIDDEN
    if status == 429:
        return Health.RATE_LIMITED
    return Health.PROVIDER_ERROR


def json_or_none(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):  # not JSON, or nested deeper than any real answer
        return None


def error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) from the common `{"error": {...}}` envelope, tolerant of its variants."""
    if not isinstance(body, dict):
        return None, None, None
    err = body.get("error")
    if isinstance(err, str):
        return None, None, err
    if not isinstance(err, dict):
        msg = body.get("message")
        return None, None, msg if isinstance(msg, str) else None
    code = err.get("code")
    return (
        err.get("type") if isinstance(err.get("type"), str) else None,
        str(code) if code is not None else None,
        err.get("message") if isinstance(err.get("message"), str) else None,
    )


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):  # "inf", "nan", 1e999: no count a header can mean
        return None


def _duration(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None


_OPENAI_RATELIMIT = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                     "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
RATELIMIT_CACHE = 4096  # parsed header sets kept: at thousands of keys a cycle most answers repeat one
_ratelimits: dict[tuple[str | None, ...], RateLimit | None] = {}


def _case_blind(headers: httpx2.Headers | Mapping[str, str]) -> Mapping[str, str]:
    """`headers` as a mapping whose `get` ignores case: httpx2's and aiohttp's already do."""
    return {k.lower(): v for k, v in headers.items()} if isinstance(headers, dict) else headers


def openai_ratelimit(headers: httpx2.Headers | Mapping[str, str]) -> RateLimit | None:
    """`x-ratelimit-*` headers (OpenAI, Azure, many gateways); resets are Go durations.

    The same header values give the same (immutable) RateLimit, parsed once and shared by every key's
    state that shows them."""
    h = _case_blind(headers)
    raw = tuple(h.get(name) for name in _OPENAI_RATELIMIT)
    try:
        return _ratelimits[raw]
    except KeyError:
        pass
    rl: RateLimit | None = RateLimit(
        requests_limit=_int(raw[0]),
        requests_remaining=_int(raw[1]),
        requests_reset_seconds=_duration(raw[2]),
        tokens_limit=_int(raw[3]),
        tokens_remaining=_int(raw[4]),
        tokens_reset_seconds=_duration(raw[5]),
    )
    if rl == _NO_RATELIMIT:
        rl = None
    if sum(len(v) for v in raw if v) <= 200:  # real values are short; a hostile header is not kept
        if len(_ratelimits) >= RATELIMIT_CACHE:
            _ratelimits.clear()
        _ratelimits[raw] = rl
    return rl


_NO_RATELIMIT = RateLimit()


def _rfc3339_in(value: str | None, now: datetime | None = None) -> float | None:
    if not value:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())


def anthropic_ratelimit(headers: httpx2.Headers | dict[str, str], now: datetime | None = None) -> RateLimit | None:
    """`anthropic-ratelimit-*` headers; resets are RFC 3339 timestamps."""
    h = {k.lower(): v for k, v in headers.items()}
    p = "anthropic-ratelimit-"
    rl = RateLimit(
        requests_limit=_int(h.get(p + "requests-limit")),
        requests_remaining=_int(h.get(p + "requests-remaining")),
        requests_reset_seconds=_rfc3339_in(h.get(p + "requests-reset"), now),
        tokens_limit=_int(h.get(p + "tokens-limit")),
        tokens_remaining=_int(h.get(p + "tokens-remaining")),
        tokens_reset_seconds=_rfc3339_in(h.get(p + "tokens-reset"), now),
    )
    return None if rl == RateLimit() else rl


def retry_after(headers: httpx2.Headers | dict[str, str]) -> float | None:
    h = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in h:
        ms = _int(h["retry-after-ms"])
        if ms is not None:
            return ms / 1000
    value = h.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
