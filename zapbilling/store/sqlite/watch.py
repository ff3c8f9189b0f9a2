"""Alerts and spend caps on SQLite, evaluated inside the write transactions that can change what
they watch (called by the write paths when outbox.Watch says the tenant has any)."""
from __future__ import annotations

import sqlite3

from .outbox import Watch


def after_account_write(conn: sqlite3.Connection, tenant: int, user: str, currency: str, now: int, w: Watch) -> None:
    """After a write changed the account's balance, holds or usage (a ledger row, a hold placed,
    captured, released or expired), in its transaction: trigger or re-arm the balance_below and
    usage_above (cents) alerts of the user, record spend_cap.reached when the period's use
    passed a cap. Being built: does nothing yet."""


def check_spend_cap(conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, now: int) -> None:
    """Before a hold of `amount` is placed, in its transaction: refusals.CapReached when it
    would take a cap's period past its limit. Being built: checks nothing yet."""


def after_meter_events(conn: sqlite3.Connection, tenant: int, touched: set[tuple[str, str]], now: int, w: Watch) -> None:
    """After meter events were recorded for these (meter id, user) pairs, in their transaction:
    trigger the usage_above alerts counted in a meter's units. Being built: does nothing yet."""
