"""export on PostgreSQL (being ported from ../sqlite/export.py)."""
from __future__ import annotations

from .connection import PgBase


class ExportQueries(PgBase):
    pass
