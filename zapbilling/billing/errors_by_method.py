"""The errors each operation answers beyond those every call shares, kept by hand in one place
for the API reference (`zapbilling gen docs`, docs/api.md).

What the API reference derives by itself is not here: a missing required parameter, a wrong type,
an unknown parameter or enum value, a bad API key, a read key calling a mutating method, an
idempotency key reused with other params. What is here is what only the handlers know: the
entities an id must name (404), the states an operation refuses (409, 402) and the checks a
handler makes on a valid-looking value (400). The wording is the part of a message a caller can
rely on (the full message may say more); `<...>` stands for what the server fills in.

Two checks keep this from drifting. The registry refuses to start unless ERRORS_BY_METHOD has
exactly the schema's methods, as it does for the handlers; tests/test_docs.py checks that every
message listed here appears in the source of zapbilling/ (each run of text between `<...>`
placeholders and numbers, verbatim).
"""
from __future__ import annotations

from typing import Mapping

from . import validation
from ..models import Rule

Error = tuple[str, str]
"""(error kind of zapbilling/errors.py KINDS, message)."""

_HOLD_NOT_FOUND: Error = ("not_found", "hold not found")
_NOT_PENDING: Error = ("conflict", "hold is not pending: it is <status>")
_METER_NOT_FOUND: Error = ("not_found", "meter not found")
_BALANCE_RANGE: Error = ("invalid_params", "amount would take the balance outside the signed 64-bit range")
_CREDIT_RANGE: Error = ("invalid_params", "amount would take the user's unspent expiring credit outside the signed 64-bit range")
_ENDPOINT_NOT_FOUND: Error = ("not_found", "webhook endpoint not found")
_EVENT_NOT_FOUND: Error = ("not_found", "event not found")

ERRORS_BY_METHOD: Mapping[str, tuple[Error, ...]] = {
    "getBalance": (),
    "getBalanceAll": (),
    "getUsage": (("not_found", "transaction not found"),),
    "recordUsage": (_BALANCE_RANGE,),
    "deposit": (_BALANCE_RANGE, _CREDIT_RANGE),
    "grantStarterCredit": (_BALANCE_RANGE, _CREDIT_RANGE),
    "refund": (
        ("not_found", "original transaction not found"),
        ("invalid_params", "only a charge can be refunded: <originalTransactionId> is a <type>"),
        ("invalid_params", "refund exceeds original: <left> of <amount> cents left to refund"),
        _BALANCE_RANGE,
    ),
    "createMeter": (
        ("conflict", "a meter with eventName <eventName> already exists"),
        ("conflict", "meter quota reached: an org holds at most <quota> meters in each mode"),
    ),
    "listMeters": (("not_found", "meter not found"),),
    "getMeter": (_METER_NOT_FOUND,),
    "recordMeterEvents": (_METER_NOT_FOUND,),
    "getMeterEventsSummary": (
        _METER_NOT_FOUND,
        ("invalid_params", "the sum of this meter's values is beyond the signed 64-bit range"),
    ),
    "createCreditGrant": (_METER_NOT_FOUND,),
    "listCreditGrants": (),
    "getCreditBalance": (),
    "voidCreditGrant": (
        ("not_found", "credit grant not found"),
        ("invalid_params", "grant is already voided"),
    ),
    "burnCredits": (_METER_NOT_FOUND,),
    "createPricingRule": (
        _METER_NOT_FOUND,
        ("conflict", "pricing rule quota reached: a meter holds at most <quota> pricing rules"),
        ("invalid_params", "unitPrice must not be negative"),
        ("invalid_params", "tiers are only for the tiered and volume models"),
        ("invalid_params", "tiers are required for the <model> model"),
        ("invalid_params", "tiers[<i>]: upTo, price and flat must not be negative"),
        ("invalid_params", "tiers[<i>]: only the last tier may be unbounded (upTo 0)"),
        ("invalid_params", "the last tier must be unbounded (upTo 0)"),
        ("invalid_params", "tiers[<i>]: upTo must be greater than the previous tier's (<upTo>): tiers out of order"),
    ),
    "listPricingRules": (_METER_NOT_FOUND,),
    "deletePricingRule": (("not_found", "pricing rule not found"),),
    "invoicePreview": (
        ("invalid_params", "the price of this usage is beyond the signed 64-bit range"),
        ("invalid_params", "the sum of this meter's values is beyond the signed 64-bit range"),
    ),
    "createHold": (
        ("insufficient_funds", "insufficient funds: <available> cents <currency> available, <amount> requested"),
        ("invalid_params", "amount would take the user's holds outside the signed 64-bit range"),
        ("spend_cap_reached", "spend cap reached: <used> of <limit> cents <currency> this <period>"),
    ),
    "captureHold": (
        _HOLD_NOT_FOUND,
        _NOT_PENDING,
        ("invalid_params", "capture exceeds hold: <amount> cents asked, <held> held"),
    ),
    "releaseHold": (_HOLD_NOT_FOUND, _NOT_PENDING),
    "getHold": (_HOLD_NOT_FOUND,),
    "listHolds": (_HOLD_NOT_FOUND,),
    "listTransactions": (("not_found", "transaction not found"),),
    "listAccounts": (),
    "listCreditTransactions": (
        ("not_found", "credit grant not found"),
        ("not_found", "credit transaction not found"),
    ),
    "createWebhookEndpoint": (
        ("invalid_params", "url must be an absolute http:// or https:// URL with a host"),
        ("invalid_params", "url must not point to a private address"),
        ("invalid_params", 'events must name at least one event type, or be ["*"]'),
        ("invalid_params", 'events must be ["*"] alone or a list of event types'),
        ("invalid_params", "unknown event type: <type>"),
    ),
    "listWebhookEndpoints": (),
    "deleteWebhookEndpoint": (_ENDPOINT_NOT_FOUND,),
    "rotateWebhookSecret": (_ENDPOINT_NOT_FOUND,),
    "listEvents": (_EVENT_NOT_FOUND,),
    "getEvent": (_EVENT_NOT_FOUND,),
    "redeliverEvent": (_EVENT_NOT_FOUND, _ENDPOINT_NOT_FOUND),
    "createAlert": (
        ("invalid_params", "threshold must be positive for balance_below"),
        ("invalid_params", "period is only for usage_above"),
        ("invalid_params", "meterId is only for usage_above"),
        ("invalid_params", "threshold must not be negative for usage_above"),
        ("invalid_params", "period is required for usage_above"),
        _METER_NOT_FOUND,
        ("conflict", "alert quota reached: an org holds at most <quota> alerts in each mode"),
    ),
    "listAlerts": (),
    "deleteAlert": (("not_found", "alert not found"),),
    "setSpendCap": (),
    "getSpendCaps": (),
    "deleteSpendCap": (("not_found", "spend cap not found"),),
    "getMeterEventsSeries": (
        _METER_NOT_FOUND,
        ("invalid_params", "periodEnd must be after periodStart"),
        ("invalid_params", "too many windows: <n> (at most 1000)"),
        ("invalid_params", "the sum of this meter's values is beyond the signed 64-bit range"),
    ),
}
"""Method name -> its own errors, in the order the server checks them where it matters."""

ERRORS_BY_RULE: Mapping[Rule, tuple[str, ...]] = {
    validation.currency: ("unknown currency: <value>",),
    validation.positive: ("<name> must be positive",),
    validation.page_limit: (f"<name> must be between 1 and {validation.MAX_PAGE}",),
    validation.expiry_days: (f"<name> must be at most {validation.MAX_EXPIRY_DAYS} days",),
    validation.hold_expiry: (
        "<name> must be a positive number of seconds",
        f"<name> must be at most {validation.MAX_HOLD_SECONDS} seconds (7 days)",
    ),
    validation.timestamp: ("invalid <name>",),
    validation.period_bound: ("invalid <name> format",),
    validation.go_duration: ("invalid <name>",),
    validation.event_batch: ("at least one event is required", f"maximum {validation.MAX_EVENTS} events per batch"),
}
"""The invalid-params messages of each parameter rule (billing/validation.py); `<name>` is the
parameter the rule checks. The API reference lists them with every parameter the rule checks."""


__all__ = ["ERRORS_BY_METHOD", "ERRORS_BY_RULE", "Error"]
