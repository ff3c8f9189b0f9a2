"""Moving an embedded SQLite database into an empty PostgreSQL one (`zapbilling copy`): every row
of every table, with its ids, seq values, key hashes (keys keep working) and idempotency
records (a retry after the move answers what the first call did).

How, and why:
- The source is opened read-only (`mode=ro`: the copy never writes to it; it stays the way
  back if anything goes wrong) and read inside one read transaction, so every table comes from
  one moment even if a server is still writing (what it writes after that moment is not
  copied: stop the servers first). Each table is read by a cursor, `BATCH` rows at a time,
  never a whole table in memory.
- The source must be a zapbilling database migrated to exactly the version this zapbilling
  knows. One that is behind is refused, not migrated here: migrating an older file rebuilds
  its ledger (migration 4), a large write to the very file the copy promises not to touch.
  `zapbilling migrate --db PATH` brings it up to date.
- The target is written in ONE transaction: its migrations (PostgreSQL's DDL is
  transactional), the check that it holds no row, a lock on every table (EXCLUSIVE: a server
  started on the target too early waits instead of writing between the check and the copy),
  the secondary indexes dropped, one binary COPY per table (asyncpg's copy_records_to_table,
  fed by the source's cursor as it streams), the indexes built again, then each identity
  sequence moved past the largest id copied, so the next row written gets the next number. Any refusal or error rolls all of it back: the target is left
  as it was.
- Values are copied as they are. The one difference of shape is the idempotency record:
  SQLite keeps a stored answer as TEXT (plain JSON) or a BLOB (zlib-compressed JSON: see
  answers.py), PostgreSQL as BYTEA with a `compressed` flag; the UTF-8 bytes of the text, or
  the BLOB, with the flag set from the value's type, are what postgres/connection.py reads back.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import asyncpg

from .locator import describe
from .migrations import scripts
from .postgres.connection import CONNECT_TIMEOUT, migrate, unavailable
from .sqlite.outbox import event_data

TABLES = (
    "tenants", "api_keys", "ledger", "balances", "idempotency", "meters", "meter_events", "credit_grants",
    "credit_transactions", "pricing_rules", "holds",
    "webhook_endpoints", "events", "deliveries", "delivery_attempts", "alerts", "alert_marks", "spend_caps", "usage_totals",
    "events_purged",
)
"""Every table but schema_migrations (which migrating the target writes), in an order that
inserts a row after the rows its foreign keys name (api_keys after tenants, the credit journal
after its grants). A table that a later migration adds must be named here: the copy refuses
databases whose tables differ from this list rather than leave one behind."""

DERIVED = ("ledger_tags",)
"""Tables of rows derived from other tables by the database itself (migration 0008's trigger
splits each ledger row's tags into ledger_tags), which the copy does not copy: the target's
trigger writes them as the ledger's rows arrive (COPY fires row triggers), from the same rows,
so they come out the same without being read twice. Only rows with tags of their own (not ''
or 'api-usage' alone) call the trigger's function."""

BATCH = 5000
"""Source rows fetched at a time (asyncpg sends the COPY data in 512 KiB chunks as it goes)."""

# Target columns whose source value is computed (the source has no such column), and source
# values converted on the way. SQLite's CAST(text AS BLOB) gives the text's UTF-8 bytes.
_SOURCE_EXPRESSION = {
    ("idempotency", "response"): "CAST(response AS BLOB)",
    ("idempotency", "compressed"): "typeof(response) = 'blob'",
    ("events", "data"): event_data("events."),  # a usage.recorded's data, made from its ledger row (sqlite/outbox.py)
}
_CONVERT: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("idempotency", "compressed"): bool,  # SQLite answers 0 or 1; asyncpg's boolean wants a bool
}
_DERIVED = {("idempotency", "compressed")}
_SOURCE_ONLY = {("ledger", "evented")}
"""Source columns the target has no use for: on SQLite a usage row's `evented` files it by
whether its usage.recorded event was written (migration 12), and the event is found through it;
PostgreSQL finds every event by events.user_id, which its trigger (migration 9) fills from the
event's data as the SQLite event, written without it, arrives."""


class CopyRefused(Exception):
    """The copy cannot be made as asked; nothing was written. The message is one line."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    """Rows copied per table, in copy order."""
    seconds: float = 0.0
    version: int = 0
    target: str = ""

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def open_source(path: str) -> sqlite3.Connection:
    """The source, read-only, checked to be a zapbilling database at this version's schema, with
    its read transaction begun (every read after this sees the same moment)."""
    file = Path(path)
    if not file.is_file():
        raise CopyRefused(f"cannot copy from {path}: no such database file")
    try:
        conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise CopyRefused(f"cannot copy from {path}: {exc}") from None
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if "schema_migrations" not in tables:
            raise CopyRefused(f"cannot copy from {path}: not a zapbilling database (it has no schema_migrations table)")
        versions = sorted(r[0] for r in conn.execute("SELECT version FROM schema_migrations"))
        known = [v for v, _, _ in scripts("sqlite")]
        if versions != known:
            at = versions[-1] if versions else 0
            if at < known[-1]:
                raise CopyRefused(
                    f"cannot copy from {path}: its schema is at version {at}, this zapbilling's is {known[-1]}; the copy"
                    f" does not write to its source: run `zapbilling migrate --db {path}` first"
                )
            raise CopyRefused(f"cannot copy from {path}: its schema versions {versions} are not this zapbilling's {known}:"
                              " copy it with the zapbilling that wrote it")
        tables.discard("schema_migrations")
        if tables != set(TABLES) | set(DERIVED):
            raise CopyRefused(f"cannot copy from {path}: its tables differ from the ones the copy knows"
                              f" ({_difference(tables, set(TABLES) | set(DERIVED))})")
        return conn
    except sqlite3.Error as exc:  # not a database at all, say ("file is not a database")
        conn.close()
        raise CopyRefused(f"cannot copy from {path}: {exc}") from None
    except BaseException:
        conn.close()
        raise


def _difference(have: set[str], expected: set[str]) -> str:
    parts = []
    if extra := sorted(have - expected):
        parts.append(f"unknown: {', '.join(extra)}")
    if missing := sorted(expected - have):
        parts.append(f"missing: {', '.join(missing)}")
    return "; ".join(parts)


def _rows(source: sqlite3.Connection, table: str, columns: list[str]) -> Iterator[tuple[Any, ...]]:
    """The source table's rows as the target's columns, in the table's rowid (or key) order,
    fetched BATCH at a time."""
    select = ", ".join(_SOURCE_EXPRESSION.get((table, c), f'"{c}"') for c in columns)
    converts = [(i, _CONVERT[(table, c)]) for i, c in enumerate(columns) if (table, c) in _CONVERT]
    cursor = source.execute(f'SELECT {select} FROM "{table}"')
    try:
        while batch := cursor.fetchmany(BATCH):
            if not converts:
                yield from batch
                continue
            for row in batch:
                values = list(row)
                for i, convert in converts:
                    values[i] = convert(values[i])
                yield tuple(values)
    finally:
        cursor.close()


async def _target_columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return [r[0] for r in rows]


def _source_columns(source: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in source.execute(f'PRAGMA table_info("{table}")')]


async def _prepare_target(conn: asyncpg.Connection, where: str) -> None:
    """Migrate the target (inside the caller's transaction), check that its schema is this
    zapbilling's and that it holds no row, and lock every table until the copy commits."""
    await migrate(conn)
    versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    known = [v for v, _, _ in scripts("postgres")]
    if versions != known:
        raise CopyRefused(f"cannot copy to {where}: its schema versions {versions} are not this zapbilling's {known}")
    tables = [r[0] for r in await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'"
        " ORDER BY tablename"
    )]
    if set(TABLES + DERIVED) - set(tables):
        raise CopyRefused(f"cannot copy to {where}: its tables differ from the ones the copy knows"
                          f" ({_difference(set(tables), set(TABLES + DERIVED))})")
    await conn.execute(f"LOCK TABLE {', '.join(TABLES + DERIVED)} IN EXCLUSIVE MODE")
    # Any row in any table of the schema, ours or not: the copy goes into an empty database only.
    holding = [t for t in tables if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{t}")')]
    if holding:
        raise CopyRefused(f"cannot copy to {where}: it is not empty ({', '.join(holding)} hold rows);"
                          " copy only into an empty database")


async def _drop_secondary_indexes(conn: asyncpg.Connection) -> list[str]:
    """Drop the copied tables' indexes that back no constraint (the ones a primary key or a
    UNIQUE column makes stay); return the statements that make them again. Building an index
    once over the loaded rows is cheaper than updating it row by row: measured on 200,000
    ledger rows and 200,000 meter events (dev cluster, shared 2-core machine), COPY with every
    index 4.96 s; without the secondary ones 1.71 s, plus 1.37 s to build them after."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid"
        " WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY($1::text[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"
        " ORDER BY t.relname, c.relname",
        list(TABLES),
    )
    for name, _ in rows:
        await conn.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in rows]


async def _advance_sequences(conn: asyncpg.Connection) -> None:
    """Move each identity sequence past the largest value copied into its column: the rows
    were copied with their own ids and seqs, which the sequences did not count."""
    identities = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES' AND table_name <> 'schema_migrations'"
    )
    for table, column in identities:
        await conn.execute(
            f'SELECT setval(pg_get_serial_sequence($1, $2), m) FROM (SELECT max("{column}") AS m FROM "{table}") t'
            " WHERE m IS NOT NULL",
            table, column,
        )


async def copy_database(source_path: str, target_url: str, progress: Callable[[str, int], None] | None = None) -> CopyReport:
    """Copy every row of the SQLite database at `source_path` into the empty PostgreSQL
    database `target_url`, all in one transaction. Raises CopyRefused (nothing written) for a
    source or target that does not fit, Unavailable for a target that cannot be reached or
    refuses us (a wrong password, a missing database). `progress(table, rows)` is called after
    each table."""
    where = describe(target_url)
    started = time.perf_counter()
    source = open_source(source_path)
    try:
        try:
            conn = await asyncpg.connect(
                target_url, timeout=CONNECT_TIMEOUT,
                # A large table's COPY may run for minutes: no statement timeout (a server's
                # pool sets one; this session is the copy's own).
                server_settings={"application_name": "zapbilling copy", "statement_timeout": "0"},
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            raise unavailable(target_url, exc) from None
        try:
            report = CopyReport(target=where, version=max(v for v, _, _ in scripts("postgres")))
            async with conn.transaction():
                await _prepare_target(conn, where)
                indexes = await _drop_secondary_indexes(conn)
                for table in TABLES:
                    columns = await _target_columns(conn, table)
                    wanted = {c for c in columns if (table, c) not in _DERIVED}
                    have = {c for c in _source_columns(source, table) if (table, c) not in _SOURCE_ONLY}
                    if have != wanted:
                        raise CopyRefused(f"cannot copy table {table}: its columns differ between {source_path} and {where}"
                                          f" ({_difference(have, wanted)})")
                    status = await conn.copy_records_to_table(table, records=_rows(source, table, columns), columns=columns)
                    report.rows[table] = int(status.rsplit(" ", 1)[-1])
                    if progress is not None:
                        progress(table, report.rows[table])
                for table in DERIVED:  # written by the target's triggers as their sources were copied
                    report.rows[table] = int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
                    if progress is not None:
                        progress(table, report.rows[table])
                for definition in indexes:  # a unique one checks its rows here: a duplicate rolls back the copy
                    await conn.execute(definition)
                await _advance_sequences(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # A value PostgreSQL refuses (a NUL in a text, a number beyond BIGINT), or the
            # connection lost mid-copy: rolled back, nothing written.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CopyRefused(f"cannot copy to {where}: {reason}; nothing was written") from None
        finally:
            await conn.close()
    finally:
        source.close()
    report.seconds = time.perf_counter() - started
    return report
