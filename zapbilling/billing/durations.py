"""Go-style durations (`720h`, `1h30m`, `90m`, `1.5h`, `300ms`), as callers of the Go billing
package that zapbilling's contract was first written against send `expiresIn` for credit
grants, parsed exactly into integer microseconds."""
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
_NUMBER = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"  # ASCII digits only, as Go reads them
_UNIT = r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_PART = re.compile(f"({_NUMBER})({_UNIT})")
_WHOLE = re.compile(f"\\+?(?:{_NUMBER}{_UNIT})+\\Z")
GO_MAX = Fraction(2**63 - 1, 1000)
"""Go's largest duration (int64 nanoseconds, about 292 years), in microseconds."""


def parse_duration(text: str) -> int:
    """Microseconds (sub-microsecond parts are truncated), at most Go's range, which also
    keeps every expiry a representable time. Only positive durations: a grant
    that expires the instant it is made is a mistake, not a feature. Raises ValueError."""
    if not _WHOLE.match(text):
        raise ValueError(f"not a duration: {text!r}")
    total = sum((Fraction(n) * _UNITS_US[unit] for n, unit in _PART.findall(text)), Fraction(0))
    if total > GO_MAX:
        raise ValueError(f"duration beyond Go's range (2562047h47m16.854775807s): {text!r}")
    us = int(total)
    if us <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return us
