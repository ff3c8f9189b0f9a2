"""The domain handlers: `async def handler(ctx, params) -> result`. No HTTP, no SQL.

HANDLERS maps each schema method name to its handler; the registry checks at start-up that
the two sets are equal, so a method without a handler (or the reverse) never reaches a caller.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from ..context import Context
from . import ledger
from .validation import FIELD_RULES, METHOD_RULES

Handler = Callable[[Context, Any], Awaitable[dict[str, Any]]]

HANDLERS: dict[str, Handler] = {
    "getBalance": ledger.get_balance,
    "getBalanceAll": ledger.get_balance_all,
    "getUsage": ledger.get_usage,
    "recordUsage": ledger.record_usage,
    "deposit": ledger.deposit,
    "grantStarterCredit": ledger.grant_starter_credit,
    "refund": ledger.refund,
}

__all__ = ["FIELD_RULES", "HANDLERS", "METHOD_RULES", "Handler"]
