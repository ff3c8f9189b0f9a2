"""Go-style durations (`720h`, `1h30m`, `90m`, `1.5h`, `300ms`), as the reference's callers
send `expiresIn` for credit grants, parsed exactly into integer microseconds."""
from __future__ import annotations

import re
from fractions import Fraction

_UNITS_US = {
    "ns": Fraction(1, 1000),
    "us": Fraction(1),
    "\u00b5s": Fraction(1),  # micro sign
    "\u03bcs": Fraction(1),  # Greek mu
    "ms": Fraction(1000),
    "s": Fraction(1_000_000),
    "m": Fraction(60_000_000),
    "h": Fraction(3_600_000_000),
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_WHOLE = re.compile(r"(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+\Z")


def parse_duration(text: str) -> int:
    """Microseconds (sub-microsecond parts are truncated). Only positive durations: a grant
    that expires the instant it is made is a mistake, not a feature. Raises ValueError."""
    if not _WHOLE.match(text):
        raise ValueError(f"not a duration: {text!r}")
    total = sum((Fraction(n) * _UNITS_US[unit] for n, unit in _PART.findall(text)), Fraction(0))
    us = int(total)
    if us <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return us
