"""zapbilling: a usage-based billing service. Its operations are declared once, in
schemas/billing.zap, and served over the ZAP endpoint and REST alike."""

__version__ = "0.1.0"

from .sqlite_setup import tune as _tune_sqlite

_tune_sqlite()  # before anything loads the sqlite3 module (sqlite_setup.py)
