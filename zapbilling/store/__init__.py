"""Storage: the interface handlers use (base.py) and its SQLite implementation."""
from .base import (
    BurnPlan, HoldCharge, HoldRow, Idempotency, KeyInfo, LedgerRow, MeterEventDraft, NewEntry, NewHold, Principal, Row, Store,
    UsageEvent,
)
from .sqlite import SqliteStore

__all__ = [
    "BurnPlan", "HoldCharge", "HoldRow", "Idempotency", "KeyInfo", "LedgerRow", "MeterEventDraft", "NewEntry", "NewHold",
    "Principal", "Row", "SqliteStore", "Store", "UsageEvent",
]
