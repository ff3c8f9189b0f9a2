"""Storage: the interface handlers use (base.py) and its SQLite implementation."""
from .base import BurnPlan, Idempotency, KeyInfo, LedgerRow, MeterEventDraft, NewEntry, Principal, Row, Store, UsageEvent
from .sqlite import SqliteStore

__all__ = [
    "BurnPlan", "Idempotency", "KeyInfo", "LedgerRow", "MeterEventDraft", "NewEntry", "Principal", "Row", "SqliteStore",
    "Store", "UsageEvent",
]
