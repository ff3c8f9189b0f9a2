"""Domain checks on parameters, attached to the schema-derived params models by field name.

The registry refuses to start if a rule or a length bound names a method or field the schema
does not have, so these cannot drift from the schema. Rules run in schema field order with the
type checks, so the first failure reported is the first in the contract's parameter order.

Every text parameter has a length bound (TEXT_BOUNDS, else TEXT_BOUND), checked as the value is
read, before its rule: no rule ever parses more than its bound (`expiresIn` is parsed from at
most 64 characters). An over-long text is `<name> is too long: at most N` (`<name>` the path,
`events[0].userId`). The free-form values' bounds (`metadata`, `dimensions`: bytes and keys) are
a deployment's choice and live in zapbilling/limits.py.
"""
from __future__ import annotations

from typing import Any, Callable

from ..models import Rule, invalid
from ..times import parse_ts
from .currencies import CODES
from .durations import parse_duration

MAX_PAGE = 1000
MAX_EXPIRY_DAYS = 36_500

TEXT_BOUND = 255
"""The length of every text parameter TEXT_BOUNDS does not name: ids (ours are 27 characters),
users, names, event names, models, plans, tags to filter by, request ids and meter events'
idempotency keys (as the Idempotency-Key header's 255), dimension names and values."""
_TIME = 64  # RFC 3339 with nanoseconds and an offset is 35 characters
TEXT_BOUNDS: dict[str, int] = {
    "notes": 1000,          # a sentence or two for people; the default notes are at most ~330
    "tags": 1000,           # comma-separated tags
    "expiresIn": 64,        # a Go duration: the longest meaningful one, 2562047h47m16.854775807s, is 24
    "currency": 16,         # a code is 3 letters; a longer text up to 16 is still `unknown currency: <it>`
    "url": 2048,            # a webhook endpoint's: room for a path and a query carrying a token
    "timestamp": _TIME,
    "periodStart": _TIME,
    "periodEnd": _TIME,
    "createdAfter": _TIME,
    "createdBefore": _TIME,
}
"""Length bounds of text parameters by name, in every method and nested struct (a list's items
and a map's values too). A name here must be a text field of the schema (checked at start-up)."""


def documented(**json_schema: Any) -> Callable[[Rule], Rule]:
    """States in JSON Schema what a rule enforces, for the OpenAPI document, next to the code
    that enforces it. Only what JSON Schema can say exactly, or as a necessary condition (a
    currency is three letters; not every three letters are a currency); a rule that parses text
    (times, durations) carries none."""

    def attach(rule: Rule) -> Rule:
        rule.json_schema = json_schema  # type: ignore[attr-defined]
        return rule

    return attach


@documented(pattern="^[A-Za-z]{3}$")
def currency(value: str, name: str) -> str:
    code = value.lower()
    if code not in CODES:
        raise invalid(f"unknown currency: {value}")
    return code


@documented(minimum=1)
def positive(value: int, name: str) -> int:
    if value <= 0:
        raise invalid(f"{name} must be positive")
    return value


@documented(minimum=1, maximum=MAX_PAGE)
def page_limit(value: int, name: str) -> int:
    if not 1 <= value <= MAX_PAGE:
        raise invalid(f"{name} must be between 1 and {MAX_PAGE}")
    return value


@documented(maximum=MAX_EXPIRY_DAYS)
def expiry_days(value: int, name: str) -> Any:
    if value > MAX_EXPIRY_DAYS:
        raise invalid(f"{name} must be at most {MAX_EXPIRY_DAYS} days")
    return value


MAX_HOLD_SECONDS = 7 * 86_400


@documented(minimum=1, maximum=MAX_HOLD_SECONDS)
def hold_expiry(value: int, name: str) -> int:
    if value <= 0:
        raise invalid(f"{name} must be a positive number of seconds")
    if value > MAX_HOLD_SECONDS:
        raise invalid(f"{name} must be at most {MAX_HOLD_SECONDS} seconds (7 days)")
    return value


def _parsed_by(parse: Callable[[str], Any], expected: str, suffix: str = "") -> Rule:
    """A rule for text that must parse (a time, a duration); the value stays text."""

    def rule(value: str, name: str) -> str:
        try:
            parse(value)
        except ValueError:
            raise invalid(f"invalid {name}{suffix}: expected {expected}, got {value!r}") from None
        return value

    return rule


timestamp = _parsed_by(parse_ts, "RFC 3339 or YYYY-MM-DD")
period_bound = _parsed_by(parse_ts, "RFC 3339 or YYYY-MM-DD", " format")  # the Go reference service's wording, kept for its callers
go_duration = _parsed_by(parse_duration, "a positive duration such as 720h, 1h30m or 90m")


MAX_EVENTS = 100


@documented(minItems=1, maxItems=MAX_EVENTS)
def event_batch(value: list[Any], name: str) -> list[Any]:
    if not value:
        raise invalid("at least one event is required")
    if len(value) > MAX_EVENTS:
        raise invalid(f"maximum {MAX_EVENTS} events per batch")
    return value


FIELD_RULES: dict[str, Rule] = {
    "currency": currency,
    "limit": page_limit,
    "timestamp": timestamp,
    "periodStart": period_bound,
    "periodEnd": period_bound,
    "createdAfter": timestamp,
    "createdBefore": timestamp,
}
"""Rules for every parameter with this name, in every method and nested struct."""

METHOD_RULES: dict[str, dict[str, Rule]] = {
    "deposit": {"amount": positive, "expiresIn": expiry_days},
    "refund": {"amount": positive},
    "recordMeterEvents": {"events": event_batch},
    "createCreditGrant": {"amountCents": positive, "expiresIn": go_duration},
    "burnCredits": {"amount": positive},
    "createHold": {"amount": positive, "expiresIn": hold_expiry},
    "captureHold": {"amount": positive},
    "setSpendCap": {"limit": positive},  # cents, not a page size
}
"""Rules for one method's own parameters."""
