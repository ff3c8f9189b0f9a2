"""Storage: the interface handlers use (base.py, refusals.py) and its backends. Importing this
package loads no backend (no database driver): `SqliteStore` is imported when first named."""
from typing import Any

from .base import (
    DURABILITY, SYSTEM_KEY, Account, Unavailable, KeyRevoked, Burn, BurnedGrant, BurnPlan, GrantChange, GrantRow, HoldCharge, HoldRow, Idempotency, KeyInfo,
    LedgerFilter, LedgerRow, Lot, LotRules, MeterEventDraft, MeterRow, NewEntry, NewGrant, NewHold, NewMeter, NewRule, Principal,
    Refundable, Row, RuleRow, Store, UsageEvent,
)
from .locator import describe, is_postgres, sqlite_path
from .refusals import (
    AlreadyExists, AlreadyVoided, KeyReused, Missing, NotPending, NotRefundable, OutOfRange, OverCapture, Refused,
    RefundLeft, ShortOfFunds, SumOutOfRange,
)


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from .sqlite import SqliteStore

        return SqliteStore
    if name == "PostgresStore":
        from .postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_store(db: str, durability: str = "full") -> Store:
    """The store `--db` names, not yet opened; only its backend's driver is loaded."""
    if is_postgres(db):
        from .postgres import PostgresStore

        return PostgresStore(db, durability)
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_path(db), durability)


__all__ = [
    "DURABILITY", "SYSTEM_KEY", "Unavailable", "KeyRevoked", "Account", "AlreadyExists", "AlreadyVoided", "Burn", "BurnPlan", "BurnedGrant", "GrantChange",
    "GrantRow", "HoldCharge", "HoldRow", "Idempotency", "KeyInfo", "KeyReused", "LedgerFilter", "LedgerRow", "Lot", "LotRules",
    "MeterEventDraft", "MeterRow", "Missing", "NewMeter", "NewRule", "RuleRow", "NewEntry", "NewGrant", "NewHold", "NotPending", "NotRefundable", "OutOfRange",
    "OverCapture", "Principal", "Refundable", "RefundLeft", "Refused", "Row", "ShortOfFunds", "SqliteStore", "PostgresStore", "Store", "describe", "is_postgres", "make_store", "sqlite_path",
    "SumOutOfRange", "UsageEvent",
]
