"""Bulk rows for scenarios 4 and 6, written straight into zapbilling's tables with SQL, exactly as
the service writes them: the rows of many `recordUsage` calls (ledger withdrawals, their running
balance), of many `recordMeterEvents` calls (meter events), of many `burnCredits` calls on one
grant (its journal) and of many users' first `deposit` (accounts).

The database must already exist, made by zapbilling itself (`zapbilling keys create` runs the
migrations; the meter, the pricing rule, the grant and each user's first deposit go through the
API). What is written here mirrors, column by column:

- ledger: zapbilling/billing/ledger.py `record_usage` -> zapbilling/store/ledger.py `append_entry`
  (id `tx_<24 hex>`, type `withdraw`, tags `api-usage`, notes `API usage: <model> (<n> tokens)`,
  metadata = json.dumps of the same dict, dedupe_key `usage:<requestId>`, remaining and
  expires_at NULL since no expiring deposit exists, created_at increasing, key_id the id of
  the tenant's key, whose calls these stand for, hold_id NULL);
- balances: the running balance minus every withdrawal, as `_add_to_balance` keeps it;
- meter_events: zapbilling/store/metering.py `insert_event` (id `evt_<24 hex>`, ts = the
  event's timestamp, created_at = when it was recorded, dimensions as json.dumps, no
  idempotency key);
- credit_transactions: zapbilling/store/grants.py `_burn` -> `_journal` (id `ct_<24 hex>`, type
  `burn`, the amount taken negative, remaining_after the grant's remainder after it, burn_id
  `burn_<24 hex>`, meter_id NULL), and the grant's `remaining` lowered by their sum;
- accounts: zapbilling/billing/ledger.py `deposit` (type `deposit`, notes
  `Deposit: <amount> cents usd`, tags '', metadata NULL, no expiry) and the balance row
  `_add_to_balance` makes for a user's first row.

`check` reads the result back through the server's API (bench/scenarios.py calls it), so a
row the service would not have written that way shows up as a wrong balance or usage entry.
"""
from __future__ import annotations

import json
import random
import secrets
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator

CHUNK = 50_000


def usage_metadata(model: str, total_tokens: int, request_id: str) -> dict[str, object]:
    """What record_usage stores for a call with these params and every other field defaulted."""
    return {
        "model": model, "provider": "", "promptTokens": 0, "completionTokens": 0, "totalTokens": total_tokens,
        "requestId": request_id, "premium": False, "stream": False, "status": "", "clientIp": "",
    }


@contextmanager
def _loading(path: str) -> Iterator[sqlite3.Connection]:
    """One write transaction on a loading connection: committed if the block ends normally,
    rolled back if it raises, and the connection closed either way."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        _close(conn)


def _connect(path: str) -> sqlite3.Connection:
    """A loading connection. The file is switched out of WAL for the load (one big transaction
    goes faster through a rollback journal) and back to WAL by _close; the server sets WAL
    and its own synchronous level when it opens the file anyway. Rows are unaffected."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")  # 256 MiB, this connection only
    return conn


def _close(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("PRAGMA journal_mode = WAL")
    finally:
        conn.close()


def _metadata_template(model: str) -> str:
    """json.dumps(usage_metadata(...)) as a %-template (the same text, built 10x faster)."""
    text = json.dumps(usage_metadata(model, 918273645, "\x01"))
    text = text.replace("%", "%%").replace("918273645", "%d").replace('"\\u0001"', '"%s"')
    assert text.count("%d") == 1 and text.count("%s") == 1, text
    return text


def _key_id(conn: sqlite3.Connection, tenant: int) -> str:
    """The tenant's (first) API key: every bulk row stands for a call made with it."""
    row = conn.execute("SELECT id FROM api_keys WHERE tenant = ? ORDER BY created_at, id LIMIT 1", (tenant,)).fetchone()
    if row is None:
        raise RuntimeError(f"tenant {tenant} has no API key: make one with `zapbilling keys create` first")
    return row[0]


def _ids(prefix: str, n: int) -> list[str]:
    """n ids as new_id(prefix) makes them (24 random hex digits each)."""
    hexes = secrets.token_bytes(12 * n).hex()
    return [f"{prefix}_{hexes[i:i + 24]}" for i in range(0, 24 * n, 24)]


def usage_rows(path: str, tenant: int, user: str, count: int, *, start_us: int, step_us: int, seed: int = 1) -> int:
    """Append `count` recordUsage withdrawals for `user` (usd) and lower the balance by their
    sum in the same transaction. Returns the sum."""
    rng = random.Random(seed)
    model = "gpt-bench"
    template = _metadata_template(model)
    total = 0
    with _loading(path) as conn:
        key_id = _key_id(conn, tenant)
        for base in range(0, count, CHUNK):
            n = min(count, base + CHUNK) - base
            amounts = rng.choices(range(1, 101), k=n)
            rows = []
            for i, tx_id, amount in zip(range(base, base + n), _ids("tx", n), amounts):
                tokens = amount * 10
                request_id = f"bulk-{i:09d}"
                metadata = template % (tokens, request_id)
                if i < 3:  # the template is json.dumps, to the byte
                    assert metadata == json.dumps(usage_metadata(model, tokens, request_id)), metadata
                rows.append((
                    tx_id, tenant, user, "usd", "withdraw", amount, "api-usage", f"API usage: {model} ({tokens} tokens)",
                    metadata, start_us + i * step_us, f"usage:{request_id}", key_id,
                ))
            total += sum(amounts)
            conn.executemany(
                "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at,"
                " dedupe_key, key_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows,
            )
        changed = conn.execute(
            "UPDATE balances SET balance = balance - ? WHERE tenant = ? AND user_id = ? AND currency = 'usd'", (total, tenant, user)
        ).rowcount
        if changed != 1:
            raise RuntimeError(f"{user} has no usd balance row: deposit through the API first")
    return total


def meter_events(
    path: str, tenant: int, meter_id: str, user: str, count: int, *, start_us: int, end_us: int, seed: int = 2
) -> int:
    """`count` events of `meter_id` for `user`, timestamps spread evenly over [start_us, end_us)
    in order, as recordMeterEvents batches with explicit timestamps write them. Returns their sum."""
    rng = random.Random(seed)
    total = 0
    recorded = time.time_ns() // 1000
    step = max((end_us - start_us) // count, 1)
    dimensions = json.dumps({"model": "gpt-bench"})
    with _loading(path) as conn:
        (meter,), = conn.execute("SELECT seq FROM meters WHERE id = ?", (meter_id,)).fetchall()  # rows name it by seq
        for base in range(0, count, CHUNK):
            n = min(count, base + CHUNK) - base
            values = rng.choices(range(1, 101), k=n)
            conn.executemany(
                "INSERT INTO meter_events (id, tenant, meter, user_id, value, ts, idempotency_key, dimensions, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                [(event_id, tenant, meter, user, value, start_us + i * step, dimensions, recorded)
                 for i, event_id, value in zip(range(base, base + n), _ids("evt", n), values)],
            )
            total += sum(values)
    return total


def credit_burns(path: str, tenant: int, grant_id: str, count: int, *, start_us: int, step_us: int, seed: int = 3) -> int:
    """`count` burns of 1..100 cents from one grant (made through the API, with enough left),
    one journal row each, and the grant's remaining lowered by their sum. Returns the sum."""
    rng = random.Random(seed)
    total = 0
    with _loading(path) as conn:
        key_id = _key_id(conn, tenant)
        found = conn.execute("SELECT user_id, currency, remaining FROM credit_grants WHERE tenant = ? AND id = ?",
                             (tenant, grant_id)).fetchone()
        if found is None:
            raise RuntimeError(f"no grant {grant_id}: create it through the API first")
        user, currency, remaining = found
        for base in range(0, count, CHUNK):
            n = min(count, base + CHUNK) - base
            rows = []
            for i, ct_id, burn_id, take in zip(range(base, base + n), _ids("ct", n), _ids("burn", n), rng.choices(range(1, 101), k=n)):
                remaining -= take
                total += take
                rows.append((ct_id, tenant, grant_id, user, currency, -take, remaining, burn_id, start_us + i * step_us, key_id))
            if remaining < 0:
                raise RuntimeError(f"grant {grant_id} is too small for {count} burns")
            conn.executemany(
                "INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after,"
                " burn_id, meter_id, created_at, key_id) VALUES (?, ?, ?, ?, ?, 'burn', ?, ?, ?, NULL, ?, ?)", rows,
            )
        conn.execute("UPDATE credit_grants SET remaining = ? WHERE id = ?", (remaining, grant_id))
    return total


def account_name(prefix: str, i: int) -> str:
    return f"{prefix}{i:07d}"


def accounts(path: str, tenant: int, prefix: str, count: int, *, start_us: int, step_us: int, seed: int = 4) -> int:
    """`count` users `<prefix>0000000`.. (in byte order as numbered), each with one usd deposit
    of 1..10,000 cents and its balance row. Returns the sum."""
    rng = random.Random(seed)
    total = 0
    with _loading(path) as conn:
        key_id = _key_id(conn, tenant)
        for base in range(0, count, CHUNK):
            n = min(count, base + CHUNK) - base
            amounts = rng.choices(range(1, 10_001), k=n)
            users = [account_name(prefix, i) for i in range(base, base + n)]
            conn.executemany(
                "INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, notes, metadata, created_at, key_id)"
                " VALUES (?, ?, ?, 'usd', 'deposit', ?, '', ?, NULL, ?, ?)",
                [(tx_id, tenant, user, amount, f"Deposit: {amount} cents usd", start_us + i * step_us, key_id)
                 for i, tx_id, user, amount in zip(range(base, base + n), _ids("tx", n), users, amounts)],
            )
            conn.executemany(
                "INSERT INTO balances (tenant, user_id, currency, balance) VALUES (?, ?, 'usd', ?)",
                [(tenant, user, amount) for user, amount in zip(users, amounts)],
            )
            total += sum(amounts)
    return total


def checkpoint(path: str) -> None:
    """Fold the WAL into the file, so copies and the server start from one file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


if __name__ == "__main__":  # timing aid: python -m bench.populate DB TENANT USER N METER (a meter's id)
    import sys

    db, tenant, user, n, meter_id = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    t = time.perf_counter()
    usage_rows(db, tenant, user, n, start_us=time.time_ns() // 1000 - n, step_us=1)
    print(f"ledger: {n} rows in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    meter_events(db, tenant, meter_id, user, n, start_us=0, end_us=n * 1000)
    print(f"events: {n} rows in {time.perf_counter() - t:.1f}s")
