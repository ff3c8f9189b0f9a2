"""A database as an older zapbilling left it, for the tests of a migration: the bundled
migrations applied up to one version, each recorded as `migrate` records it, so that `migrate`
then applies the rest."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from zapbilling.store.migrations import record, scripts


def sqlite_before(path: str | Path, version: int) -> sqlite3.Connection:
    """An autocommit connection to a new database at `path` with migrations 1 .. version - 1."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
    for v, name, sql in scripts():
        if v < version:
            conn.executescript(f"BEGIN; INSERT INTO schema_migrations VALUES ({v}, '{name}', 0);\n{sql}\nCOMMIT;")
    return conn


async def postgres_before(conn: Any, version: int) -> None:
    """Migrations 1 .. version - 1 applied on an empty PostgreSQL database (`conn`: asyncpg's)."""
    await conn.execute("CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
    for v, name, sql in scripts("postgres"):
        if v < version:
            async with conn.transaction():
                await conn.execute(record(v, name))
                await conn.execute(sql)
