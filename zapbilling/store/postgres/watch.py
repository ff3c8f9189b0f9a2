"""Alerts and spend caps on PostgreSQL (as ../sqlite/watch.py), inside the write transactions,
under the account's lock."""
from __future__ import annotations

import asyncpg

from .outbox import Watch


async def after_account_write(conn: asyncpg.Connection, tenant: int, user: str, currency: str, now: int, w: Watch) -> None:
    """As sqlite/watch.py. Being built: does nothing yet."""


async def check_spend_cap(conn: asyncpg.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """As sqlite/watch.py, under the account's lock. Being built: checks nothing yet."""


async def after_meter_events(conn: asyncpg.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watch) -> None:
    """As sqlite/watch.py. Being built: does nothing yet."""
