"""Parsing and printing of the `chf` command line's values: money, unit quantities, times and tables.

Money on the command line is a decimal amount in currency units ("10.50"). It is converted exactly to integer
micro-units (10^-6) with `decimal`, never through a float; more than six decimals is an error, not a rounding.
"""

from __future__ import annotations

import time
from decimal import Decimal, InvalidOperation
from typing import Any

from chf.core.model import RequestError

MICRO = 1_000_000
_MONEY_LIMIT = Decimal(2**62) / MICRO  # money is an int below 2**62 micro-units everywhere in the store


def parse_money(field: str, text: str, *, allow_negative: bool = False, allow_zero: bool = True) -> int:
    """A decimal amount in currency units ("10.50", "-3", "0.000001") as integer micro-units."""
    raw = str(text).strip().replace("_", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise RequestError(field, f"must be a decimal amount such as 10.50, got {text!r}") from None
    if not value.is_finite():
        raise RequestError(field, f"must be a decimal amount such as 10.50, got {text!r}")
    # Checked before any arithmetic: beyond it the decimal context (28 digits) could round.
    if abs(value) >= _MONEY_LIMIT:
        raise RequestError(field, f"is too large, got {text!r}")
    scaled = value.scaleb(6)
    if scaled != scaled.to_integral_value():
        raise RequestError(field, f"has more than 6 decimals (the smallest amount is 0.000001), got {text!r}")
    micro = int(scaled)
    if micro < 0 and not allow_negative:
        raise RequestError(field, f"must not be negative, got {text!r}")
    if micro == 0 and not allow_zero:
        raise RequestError(field, f"must not be zero, got {text!r}")
    return micro


def parse_units(field: str, text: str, *, allow_negative: bool = True) -> int:
    """A whole number of units (octets, seconds, events); '_' may group digits."""
    raw = str(text).strip().replace("_", "")
    body = raw[1:] if raw[:1] in "+-" else raw
    if not body.isdigit():
        raise RequestError(field, f"must be a whole number of units, got {text!r}")
    value = int(raw)
    if value < 0 and not allow_negative:
        raise RequestError(field, f"must not be negative, got {text!r}")
    if abs(value) >= 2**62:
        raise RequestError(field, f"is too large, got {text!r}")
    return value


def money(micro: int | None, currency: str | None = None) -> str:
    """Micro-units as a decimal with at least two decimals and no trailing zeros beyond: 10.5 EUR -> 10.50 EUR."""
    if micro is None:
        return "-"
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    frac_text = f"{frac:06d}".rstrip("0").ljust(2, "0")
    text = f"{sign}{whole}.{frac_text}"
    return f"{text} {currency}" if currency else text


_BYTE_STEPS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"))


def quantity(value: int, unit: str, currency: str | None = None) -> str:
    """A bucket amount for people: money as a decimal, bytes with a decimal prefix, others with their unit."""
    if unit == "money":
        return money(value, currency)
    if unit == "bytes":
        for step, name in _BYTE_STEPS:
            if abs(value) >= step:
                return f"{value / step:.2f} {name}"  # display only: the exact figure is in --json
        return f"{value} B"
    return f"{value} {unit}"


def when(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    if epoch >= 2**61:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(epoch))


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(c) for c in header]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def fields(pairs: list[tuple[str, Any]]) -> str:
    """`name: value` lines with the values aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)
