"""Versioned schema migrations, applied at start-up by whoever opens the database first (the
server or the CLI). Each migration is one transaction whose first statement records its
version, so a migration runs at most once even when two processes start together."""
from __future__ import annotations

import re
import sqlite3
import time
from importlib import resources

_NAME = re.compile(r"(\d{4})_(\w+)\.sql\Z")


def scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every bundled migration, in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return found


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply what is missing; return the versions applied now. Safe to call any number of times."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in scripts():
        if version in done:
            continue
        record = f"INSERT INTO schema_migrations VALUES ({version}, '{name}', {time.time_ns() // 1000});"
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{record}\n{sql}\nCOMMIT;")
        except sqlite3.IntegrityError:
            conn.rollback()  # another process applied this version first
            continue
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        applied.append(version)
    return applied
