"""grants on PostgreSQL (being ported from ../sqlite/grants.py)."""
from __future__ import annotations

from .connection import PgBase


class GrantQueries(PgBase):
    pass
