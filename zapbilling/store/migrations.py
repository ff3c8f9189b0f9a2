"""Versioned schema migrations: one list for every backend. Version N has the same name on
each, and a script per dialect (`migrations/<dialect>/NNNN_<name>.sql`), because the dialects
differ in what they can say (SQLite adds a CHECK only by rebuilding a table, PostgreSQL needs
BIGINT where SQLite's INTEGER is already 64-bit); `scripts()` refuses dialects whose lists
differ. Each migration is one transaction whose first statement records its version in
`schema_migrations`, whose primary key makes a migration run at most once even when several
processes (or servers) start together: the second one's insert waits for the first's commit,
then fails, and it moves on."""
from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources

DIALECTS = ("sqlite", "postgres")
_NAME = re.compile(r"(\d{4})_(\w+)\.sql\Z")


def _listed(dialect: str) -> list[tuple[int, str, str]]:
    found = []
    for entry in resources.files(__package__).joinpath("migrations", dialect).iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    return found


def scripts(dialect: str = "sqlite") -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration of `dialect`, in version order."""
    found = _listed(dialect)
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    names = {d: [(v, n) for v, n, _ in _listed(d)] for d in DIALECTS}
    if any(listing != names[dialect] for listing in names.values()):
        raise RuntimeError(f"every dialect must have the same migrations: {names}")
    return found


def record(version: int, name: str) -> str:
    """The statement a migration starts with (the same on both dialects)."""
    return f"INSERT INTO schema_migrations VALUES ({version}, '{name}', {time.time_ns() // 1000});"


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply what is missing to a SQLite database; return the versions applied now. Safe to
    call any number of times."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in scripts("sqlite"):
        if version in done:
            continue
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{record(version, name)}\n{sql}\nCOMMIT;")
        except sqlite3.IntegrityError:
            conn.rollback()
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)).fetchone():
                continue  # another process applied this version first
            raise  # the migration's own statements broke a constraint: it stops, nothing applied
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        applied.append(version)
    return applied
