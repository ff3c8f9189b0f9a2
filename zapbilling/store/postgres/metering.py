"""metering on PostgreSQL (being ported from ../sqlite/metering.py)."""
from __future__ import annotations

from .connection import PgBase


class MeteringQueries(PgBase):
    pass
