"""pricing on PostgreSQL (being ported from ../sqlite/pricing.py)."""
from __future__ import annotations

from .connection import PgBase


class PricingQueries(PgBase):
    pass
