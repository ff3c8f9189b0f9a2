"""Storage: the interface handlers use (base.py) and its SQLite implementation."""
from .base import Idempotency, KeyInfo, LedgerRow, NewEntry, Principal, Store
from .sqlite import SqliteStore

__all__ = ["Idempotency", "KeyInfo", "LedgerRow", "NewEntry", "Principal", "SqliteStore", "Store"]
