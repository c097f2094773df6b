"""Money as Decimal end to end; nano-units (integers) only at the database boundary."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

NANO = Decimal("1e-9")
CENT = Decimal("0.01")


class BadAmount(ValueError):
    """A provider figure that is not an amount; it fails the pull instead of counting as zero."""


def amount(value: Any, where: str) -> Decimal:
    """A provider's number or decimal string as Decimal; floats go through str() (shortest repr)."""
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise BadAmount(f"{where} is not an amount: {value!r}"[:200])
    try:
        d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise BadAmount(f"{where} is not an amount: {value!r}"[:200]) from None
    if not d.is_finite():
        raise BadAmount(f"{where} is not a finite amount")
    return d


def to_nanos(value: Decimal) -> int:
    return int((value / NANO).to_integral_value(ROUND_HALF_EVEN))


def from_nanos(value: int | None) -> Decimal:
    if not value:
        return Decimal(0)
    return (Decimal(value) * NANO).normalize() if value % 1_000_000_000 else Decimal(value // 1_000_000_000)


def usd_text(value: Decimal, places: int = 2) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN))
