"""zapbilling.billing.durations.parse_duration: Go-style durations (as the callers of the Go
billing package zapbilling's contract was first written against send a credit grant's
`expiresIn`) parsed exactly into integer microseconds. Only positive
durations are accepted; anything else raises ValueError (the API turns it into `invalid expiresIn`)."""
from __future__ import annotations

import pytest

from zapbilling.billing.durations import parse_duration

pytestmark = pytest.mark.sqlite_only("the duration scanner; no store")

US = 1
MS = 1_000
S = 1_000_000
M = 60 * S
H = 60 * M


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        # the examples the contract and the design choices name
        ("720h", 720 * H),
        ("1h30m", H + 30 * M),
        ("90m", 90 * M),
        ("1.5h", H + 30 * M),
        ("300ms", 300 * MS),
        # more of Go's grammar
        ("2h45m30s", 2 * H + 45 * M + 30 * S),
        (".5h", 30 * M),
        ("0.5h", 30 * M),
        ("1.h", H),
        ("100us", 100 * US),
        ("1\u00b5s", 1 * US),        # micro sign
        ("1\u03bcs", 1 * US),        # Greek small letter mu
        ("2000ns", 2 * US),
        ("1s", S),
        ("45s", 45 * S),
        ("1m", M),
        ("1h", H),
        ("1h0m0s", H),
        ("0h1m", M),                 # a zero part is fine when the whole is positive
        ("30m1h", H + 30 * M),      # Go accepts the parts in any order
        ("1h1h", 2 * H),             # ... and repeated units, which add up
        ("1.25s", S + 250 * MS),
        ("0.001s", 1 * MS),
        ("1.000001s", S + 1),
        ("8760h", 8760 * H),
        ("87600h", 87600 * H),
        ("007m", 7 * M),
    ],
)
def test_parse_duration_accepts_positive_go_durations(text, micros):
    assert parse_duration(text) == micros


def test_parse_duration_returns_exact_integer_microseconds():
    """Fractions are exact (no float rounding), and the result is an int, never a float."""
    cases = {
        "1.5h": 5_400_000_000,
        "0.1s": 100_000,
        "0.3s": 300_000,                 # 0.1 + 0.2 style float error would give 299_999 or 300_000.00000000006
        "2.675h": 9_630_000_000,
        "1.1m": 66_000_000,
        "0.000001s": 1,
        "33.333333s": 33_333_333,
        "1.000000001h": 3_600_000_003,   # 3600000003.6 us, truncated to whole microseconds
        "2562047h": 2_562_047 * 3_600_000_000,    # the largest whole-hour Go duration
        "0.7h0.7m0.7s0.7ms": 2_520_000_000 + 42_000_000 + 700_000 + 700,
    }
    for text, micros in cases.items():
        got = parse_duration(text)
        assert type(got) is int, (text, got)
        assert got == micros, (text, got)


@pytest.mark.parametrize(
    "text",
    [
        "0",         # Go's bare zero is not a positive duration
        "0s",
        "0h0m",
        "0.0h",
        "-1h",       # negative
        "-1.5h",
        "1d",        # Go has no day unit
        "1w",
        "abc",
        "",
        "h",
        ".h",
        "1",         # a number without a unit
        "100",
        "1H",        # units are case-sensitive
        "1Ms",
        "1 h",       # no spaces
        " 1h",
        "1h ",
        "1h\n",
        "1h30",      # a trailing number without a unit
        "1hm",
        "1..5h",
        "1.5.h",
        "1,5h",
        "1e3s",
        "hour",
        "1hour",
        "1sec",
        "PT1H",      # ISO 8601 is not Go
        "01:30:00",
        "inf",
        "nan",
    ],
)
def test_parse_duration_rejects_non_positive_or_malformed(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_rejects_durations_that_round_to_zero_microseconds():
    """Microseconds are the unit of time here: a duration shorter than one is not positive."""
    for text in ("1ns", "999ns", "0.0000001s", "0.5us"):
        with pytest.raises(ValueError):
            parse_duration(text)


@pytest.mark.parametrize("text", ["\uff11h", "\u0661h", "1\u0660m", "\u0967\u0966s"])
def test_parse_duration_rejects_non_ascii_digits(text):
    """Go reads the digits 0-9 only; fullwidth, Arabic-Indic or Devanagari digits are not a duration."""
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_rejects_durations_beyond_go_range():
    """A Go duration is an int64 of nanoseconds: at most 2562047h47m16.854775807s. Anything larger
    is not a Go duration (Go's ParseDuration answers `invalid duration`)."""
    assert parse_duration("2562047h") == 2_562_047 * H
    for text in ("2562048h", "9999999h", "99999999999999999999h"):
        with pytest.raises(ValueError):
            parse_duration(text)


# -- the same language as the pattern it replaces, in linear time (issue 17, finding 1) -----------

def _by_the_old_pattern(text: str) -> int:
    """The parser as it was, whole-text pattern and all (it backtracks quadratically on a long
    run of digits: only ever called here on short texts), as the reference for the language."""
    import re
    from fractions import Fraction

    from zapbilling.billing.durations import GO_MAX, _UNITS_US

    number, unit = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)", r"(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
    if not re.match(f"\\+?(?:{number}{unit})+\\Z", text):
        raise ValueError(text)
    total = sum((Fraction(n) * _UNITS_US[u] for n, u in re.findall(f"({number})({unit})", text)), Fraction(0))
    if total > GO_MAX or int(total) <= 0:
        raise ValueError(text)
    return int(total)


def _outcome(parse, text: str) -> int | None:
    try:
        return parse(text)
    except ValueError:
        return None


def test_the_scanner_accepts_exactly_what_the_old_pattern_did_with_the_same_result():
    """200,000 seeded random texts over the characters that matter (digits, points, signs, every
    unit's letters, a look-alike digit, a space), from 0 to 12 characters: the same answer."""
    import random

    rnd = random.Random(17)
    alphabet = list("0123456789..+-hmsnu\u00b5\u03bc ") + ["\u0661", "x", "ms", "h", "1", "0", "."]
    for _ in range(200_000):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 8)))
        assert _outcome(parse_duration, text) == _outcome(_by_the_old_pattern, text), repr(text)


def _best_of(repeat: int, fn, *args) -> float:
    import time

    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("piece, n", [
    ("1", 4096),        # the input: a run of digits with no unit (the old pattern: quadratic)
    ("1.", 2048),       # digits and points that never make a piece
    ("0h", 2048),       # many valid pieces (adding up to zero)
    ("1h", 1024),       # many valid pieces adding up, then the range
])
def test_parsing_a_long_text_costs_time_linear_in_its_length(piece, n):
    """The time for 4n pieces against n, each the best of 5 runs: about 4 when linear, 16 when
    quadratic (as the old pattern was: 4,096 `1`s took 0.1 s, 16,384 took 1.7 s). The bound, 8,
    leaves room for a loaded machine without letting a quadratic parser through."""
    def parse(text: str) -> None:
        _outcome(parse_duration, text)

    small, large = piece * n, piece * (4 * n)
    parse(large)  # warm up
    ratio = _best_of(5, parse, large) / _best_of(5, parse, small)
    assert ratio < 8, (piece, n, ratio)


def test_a_long_run_of_digits_is_refused_as_not_a_duration():
    for text in ("1" * 65_536, "1" * 65_536 + "h", "." * 1000 + "h", "1h" * 30_000 + "1", "1000h" * 3000):
        with pytest.raises(ValueError):
            parse_duration(text)
