"""The SQLite store: every query area of the storage interface over one pair of connections
(see connection.py). Only the store modules hold SQL."""
from __future__ import annotations

from .accounts import AccountQueries
from .alerts import AlertQueries
from .deliveries import DeliveryQueries
from .export import ExportQueries
from .grants import GrantQueries
from .holds import HoldQueries
from .keys import KeyQueries
from .ledger import LedgerQueries
from .metering import MeteringQueries
from .pricing import PricingQueries
from .retention import RetentionQueries
from .webhooks import WebhookQueries
from .series import SeriesQueries


class SqliteStore(KeyQueries, LedgerQueries, AccountQueries, MeteringQueries, SeriesQueries, GrantQueries, PricingQueries, HoldQueries, ExportQueries, WebhookQueries, DeliveryQueries, AlertQueries, RetentionQueries):
    """The Store (base.py) on SQLite."""
