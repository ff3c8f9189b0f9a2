"""ISO 4217 currency codes, from pycountry's copy of the standard, read once."""
from __future__ import annotations

import pycountry

CODES: frozenset[str] = frozenset(c.alpha_3.lower() for c in pycountry.currencies)
