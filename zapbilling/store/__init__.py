"""Storage: the interface handlers use (base.py, refusals.py) and its backends. Importing this
package loads no backend (no database driver): `SqliteStore` is imported when first named."""
from typing import Any

from .base import (
    DURABILITY, SYSTEM_KEY, Account, Burn, BurnedGrant, BurnPlan, GrantChange, GrantRow, HoldCharge, HoldRow, Idempotency, KeyInfo,
    LedgerFilter, LedgerRow, Lot, LotRules, MeterEventDraft, MeterRow, NewEntry, NewGrant, NewHold, NewMeter, NewRule, Principal,
    Refundable, Row, RuleRow, Store, UsageEvent,
)
from .refusals import (
    AlreadyExists, AlreadyVoided, KeyReused, Missing, NotPending, NotRefundable, OutOfRange, OverCapture, Refused,
    RefundLeft, ShortOfFunds, SumOutOfRange,
)


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DURABILITY", "SYSTEM_KEY", "Account", "AlreadyExists", "AlreadyVoided", "Burn", "BurnPlan", "BurnedGrant", "GrantChange",
    "GrantRow", "HoldCharge", "HoldRow", "Idempotency", "KeyInfo", "KeyReused", "LedgerFilter", "LedgerRow", "Lot", "LotRules",
    "MeterEventDraft", "MeterRow", "Missing", "NewMeter", "NewRule", "RuleRow", "NewEntry", "NewGrant", "NewHold", "NotPending", "NotRefundable", "OutOfRange",
    "OverCapture", "Principal", "Refundable", "RefundLeft", "Refused", "Row", "ShortOfFunds", "SqliteStore", "Store",
    "SumOutOfRange", "UsageEvent",
]
