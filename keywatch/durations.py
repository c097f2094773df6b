"""Durations as people write them in config (`5m`, `1h30m`, `250ms`) and as Go prints them in headers."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
DURATION_PATTERN = r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+$"


def parse_duration(text: str) -> float:
    """Seconds in `text` (`6m0s`, `1h2m3.5s`, `12ms`, `5m`). Raises ValueError on anything else."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)  # a bare number is seconds, as in Retry-After
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 5m, 1h30m, 250ms)")
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    seconds = round(seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            n, seconds = divmod(seconds, size)
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"
