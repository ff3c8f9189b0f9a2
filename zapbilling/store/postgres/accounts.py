"""accounts on PostgreSQL (being ported from ../sqlite/accounts.py)."""
from __future__ import annotations

from .connection import PgBase


class AccountQueries(PgBase):
    pass
