"""Go-style durations (`720h`, `1h30m`, `90m`, `1.5h`, `300ms`), as callers of the Go billing
package that zapbilling's contract was first written against send `expiresIn` for credit
grants, parsed exactly into integer microseconds.

The text is read left to right in one pass, one `<number><unit>` piece at a time, as Go's
time.ParseDuration does: the time is linear in its length. (The previous whole-text pattern,
`(?:[0-9]+\\.?[0-9]*...)+`, let the engine split a run of digits in every way before giving up:
65,536 `1`s took 28 s. The API also bounds `expiresIn` to 64 characters, before this runs.)"""
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
_PIECE = re.compile(r"([0-9]*(?:\.[0-9]*)?)([^0-9.]*)")
"""One piece at a position: a number (ASCII digits only, as Go reads them, with at most one
point), then its unit (every character up to the next digit or point, as Go takes it).
Linear: each quantifier's class is disjoint from whatever can follow it (digits, then a point,
then non-digits), so the engine never gives a character back; it is applied with match() at
the end of the previous piece, so each character is read once."""
GO_MAX = Fraction(2**63 - 1, 1000)
"""Go's largest duration (int64 nanoseconds, about 292 years), in microseconds."""


def parse_duration(text: str) -> int:
    """Microseconds (sub-microsecond parts are truncated), at most Go's range, which also
    keeps every expiry a representable time. Only positive durations: a grant
    that expires the instant it is made is a mistake, not a feature. Raises ValueError.

    The language is `+?(<number><unit>)+` with number `[0-9]+.?[0-9]*` or `.[0-9]+` and unit
    one of ns, us, µs, μs, ms, s, m, h; parts add up, in any order."""
    pos = 1 if text.startswith("+") else 0
    if pos == len(text):
        raise ValueError(f"not a duration: {text!r}")
    total = Fraction(0)
    while pos < len(text):
        piece = _PIECE.match(text, pos)
        assert piece is not None and piece.end() > pos  # every group may be empty; at pos < len one is not
        number, unit = piece.groups()
        if number in ("", ".") or unit not in _UNITS_US:
            raise ValueError(f"not a duration: {text!r}")
        # Fraction() of a piece of digits is linear too (and refuses, as ValueError, a number of
        # more than 4,300 digits, as int() does); every part is >= 0, so past Go's range is final.
        total += Fraction(number) * _UNITS_US[unit]
        if total > GO_MAX:
            raise ValueError(f"duration beyond Go's range (2562047h47m16.854775807s): {text!r}")
        pos = piece.end()
    us = int(total)
    if us <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return us
