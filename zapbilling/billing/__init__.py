"""The domain handlers: `async def handler(ctx, params) -> result`. No HTTP, no SQL.

HANDLERS maps each schema method name to its handler; the registry checks at start-up that
the two sets are equal, so a method without a handler (or the reverse) never reaches a caller.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from ..context import Context
from . import alerts, grants, holds, invoice, ledger, metering, pricing, pricing_rules, series, webhooks
from .errors_by_method import ERRORS_BY_METHOD, ERRORS_BY_RULE
from .validation import FIELD_RULES, METHOD_RULES

Handler = Callable[[Context, Any], Awaitable[dict[str, Any]]]

ENUM_TABLES = {"PricingModel": pricing.MODELS, "WindowSize": series.WIDTHS, "EventType": webhooks.EVENT_TYPES}
"""billing/'s tables keyed by a schema enum, checked against it at start-up."""

HANDLERS: dict[str, Handler] = {
    "getBalance": ledger.get_balance,
    "getBalanceAll": ledger.get_balance_all,
    "getUsage": ledger.get_usage,
    "recordUsage": ledger.record_usage,
    "deposit": ledger.deposit,
    "grantStarterCredit": ledger.grant_starter_credit,
    "refund": ledger.refund,
    "createMeter": metering.create_meter,
    "listMeters": metering.list_meters,
    "getMeter": metering.get_meter,
    "recordMeterEvents": metering.record_meter_events,
    "getMeterEventsSummary": metering.get_meter_events_summary,
    "createCreditGrant": grants.create_credit_grant,
    "listCreditGrants": grants.list_credit_grants,
    "getCreditBalance": grants.get_credit_balance,
    "voidCreditGrant": grants.void_credit_grant,
    "burnCredits": grants.burn_credits,
    "createPricingRule": pricing_rules.create_pricing_rule,
    "listPricingRules": pricing_rules.list_pricing_rules,
    "deletePricingRule": pricing_rules.delete_pricing_rule,
    "invoicePreview": invoice.invoice_preview,
    "createHold": holds.create_hold,
    "captureHold": holds.capture_hold,
    "releaseHold": holds.release_hold,
    "getHold": holds.get_hold,
    "listHolds": holds.list_holds,
    "listTransactions": ledger.list_transactions,
    "listAccounts": ledger.list_accounts,
    "listCreditTransactions": grants.list_credit_transactions,
    "createWebhookEndpoint": webhooks.create_webhook_endpoint,
    "listWebhookEndpoints": webhooks.list_webhook_endpoints,
    "deleteWebhookEndpoint": webhooks.delete_webhook_endpoint,
    "rotateWebhookSecret": webhooks.rotate_webhook_secret,
    "listEvents": webhooks.list_events,
    "getEvent": webhooks.get_event,
    "redeliverEvent": webhooks.redeliver_event,
    "createAlert": alerts.create_alert,
    "listAlerts": alerts.list_alerts,
    "deleteAlert": alerts.delete_alert,
    "setSpendCap": alerts.set_spend_cap,
    "getSpendCaps": alerts.get_spend_caps,
    "deleteSpendCap": alerts.delete_spend_cap,
    "getMeterEventsSeries": series.get_meter_events_series,
}

__all__ = ["ENUM_TABLES", "ERRORS_BY_METHOD", "ERRORS_BY_RULE", "FIELD_RULES", "HANDLERS", "METHOD_RULES", "Handler"]
