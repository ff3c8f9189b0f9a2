"""Rows as the storage interface hands them out (base.py's TypedDicts), made from a query's
columns in the order each query module selects them. The same on every backend: sqlite3 gives
tuples, asyncpg Records, and both index alike. Each converter's column list (a SELECT's or a
RETURNING's, the same text in both dialects' SQL) stands beside it, so the order is written once."""
from __future__ import annotations

import json
from typing import Any, Sequence

import orjson

from .base import AlertRow, GrantChange, GrantRow, HoldRow, LedgerRow, MeterEventRow, MeterRow, RuleRow

ROWS_PER_STEP = 256
"""Rows a long read turns into answers between two of its turns when it runs as long work
(loop_turn.converted): a pricing rule ~2.4 us, a meter's usage ~3.9 us, so 0.6-1 ms a step."""
LEDGER_ROWS_PER_STEP = 32
"""The same for ledger rows, whose metadata is decoded too: ~17 us for the largest (16 KiB),
~0.55 ms a step."""


def json_text(value: Any) -> str:
    """A value as compact JSON text for a JSON column (a row's metadata, a meter event's
    dimensions, an event's data), by orjson. Why not json.dumps: recordUsage's metadata (ten
    keys) cost the json module's encoder 22k instructions per request, 3.4% of the whole request
    (callgrind, bench.instructions --op recordUsage), and an event's data 44k against orjson's 8k.
    The text differs from json.dumps' (no spaces, UTF-8 rather than \\u escapes) but every reader
    parses it (json.loads, SQLite's and PostgreSQL's JSON functions), so rows written before and
    after read alike. What orjson refuses (an integer past 64 bits, a key that is not a string, a
    lone surrogate) goes through the json module, ASCII-escaped as json.dumps always wrote it."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"))


LEDGER_COLUMNS = "id, user_id, currency, type, amount, tags, notes, metadata, created_at, expires_at, refund_of, hold_id, key_id"


def ledger_row(r: Sequence[Any]) -> LedgerRow:
    return {
        "id": r[0], "user": r[1], "currency": r[2], "type": r[3], "amount": r[4], "tags": r[5], "notes": r[6],
        "metadata": json.loads(r[7]) if r[7] is not None else None,
        "createdAt": r[8], "expiresAt": r[9], "refundOf": r[10], "holdId": r[11], "keyId": r[12],
    }


# A hold's column says 'pending' until a settlement or the sweep; from the instant expires_at is
# reached a pending hold is expired for every reader, so its status is always computed at `now`.
# Templates of `{now}`, the parameter holding that instant in the dialect's notation.
HOLD_PENDING = "status = 'pending' AND expires_at > {now}"
HOLD_LAPSED = "status = 'pending' AND expires_at <= {now}"
HOLD_COLUMNS = (
    f"id, user_id, currency, amount, CASE WHEN {HOLD_LAPSED} THEN 'expired' ELSE status END, expires_at, created_at,"
    f" captured_amount, transaction_id, request_id, metadata, CASE WHEN {HOLD_LAPSED} THEN expires_at ELSE settled_at END"
)
"""hold_row's columns, the status and settledAt as at `{now}`."""
HOLD_STATUS_IS = {
    "pending": HOLD_PENDING,
    "expired": f"(status = 'expired' OR ({HOLD_LAPSED}))",
    "captured": "status = 'captured'",
    "released": "status = 'released'",
}
"""The condition of each status a listing filters on, as at `{now}`."""


def hold_row(r: Sequence[Any]) -> HoldRow:
    return {
        "holdId": r[0], "user": r[1], "currency": r[2], "amount": r[3], "status": r[4], "expiresAt": r[5],
        "createdAt": r[6], "capturedAmount": r[7], "transactionId": r[8], "requestId": r[9],
        "metadata": json.loads(r[10]) if r[10] is not None else None, "settledAt": r[11],
    }


GRANT_COLUMNS = ("id, user_id, name, amount, remaining, currency, priority, effective_at, expires_at, eligibility, tags,"
                 " voided_at, created_at")


def grant_row(r: Sequence[Any]) -> GrantRow:
    return {
        "id": r[0], "userId": r[1], "name": r[2], "amountCents": r[3], "remainingCents": r[4], "currency": r[5],
        "priority": r[6], "effectiveAt": r[7], "expiresAt": r[8], "eligibility": json.loads(r[9]), "tags": r[10],
        "voidedAt": r[11], "createdAt": r[12],
    }


CHANGE_COLUMNS = "id, grant_id, user_id, currency, type, amount, remaining_after, burn_id, meter_id, created_at, key_id"


def change_row(r: Sequence[Any]) -> GrantChange:
    return {
        "id": r[0], "grantId": r[1], "userId": r[2], "currency": r[3], "type": r[4], "amount": r[5],
        "remainingAfter": r[6], "burnId": r[7], "meterId": r[8], "createdAt": r[9], "keyId": r[10],
    }


METER_COLUMNS = "id, name, event_name, aggregation, currency, dimensions, created_at"


def meter_row(r: Sequence[Any]) -> MeterRow:
    return {
        "id": r[0], "name": r[1], "eventName": r[2], "aggregationType": r[3], "currency": r[4],
        "dimensions": json.loads(r[5]), "createdAt": r[6],
    }


RULE_COLUMNS = "id, meter_id, plan_id, model, currency, unit_price, tiers, created_at"


def rule_row(r: Sequence[Any]) -> RuleRow:
    return {
        "id": r[0], "meterId": r[1], "planId": r[2], "model": r[3], "currency": r[4], "unitPrice": r[5],
        "tiers": json.loads(r[6]), "createdAt": r[7],
    }


EVENT_COLUMNS = (
    "id, (SELECT m.id FROM meters m WHERE m.seq = meter_events.meter), user_id, value, ts, idempotency_key, dimensions, created_at"
)
"""A meter event's columns with its meter's id, which the row holds as the meter's seq (migration 16)."""


def event_row(r: Sequence[Any]) -> MeterEventRow:
    return {
        "id": r[0], "meterId": r[1], "userId": r[2], "value": r[3], "timestamp": r[4], "idempotency": r[5],
        "dimensions": json.loads(r[6]) if r[6] is not None else None, "createdAt": r[7],
    }


ALERT_COLUMNS = "id, type, user_id, currency, threshold, period, meter_id, created_at"


def alert_row(r: Sequence[Any]) -> AlertRow:
    return {
        "id": r[0], "type": r[1], "userId": r[2], "currency": r[3], "threshold": r[4], "period": r[5],
        "meterId": r[6], "createdAt": r[7],
    }
