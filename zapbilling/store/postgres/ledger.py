"""ledger on PostgreSQL (being ported from ../sqlite/ledger.py)."""
from __future__ import annotations

from .connection import PgBase


class LedgerQueries(PgBase):
    pass
