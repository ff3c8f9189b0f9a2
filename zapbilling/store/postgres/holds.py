"""holds on PostgreSQL (being ported from ../sqlite/holds.py)."""
from __future__ import annotations

from .connection import PgBase


class HoldQueries(PgBase):
    pass
