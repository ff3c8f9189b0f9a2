"""`zapbilling backup --db PATH --to FILE [--force]`: a consistent copy of a SQLite database, taken
while servers write to it.

How: SQLite's online backup API (`Connection.backup`) in a single step, from a read-only
connection. In WAL mode a single step is one read transaction, so the copy is the database as of
one commit, and a reader never blocks the writer: the servers go on committing while the pages
are copied (their WAL grows until the copy ends, then is checkpointed as usual). Why not a
stepwise backup: each step would restart whenever another connection commits, so under steady
writes it need never finish. Why not `VACUUM INTO`: it gives the same snapshot but rebuilds
every table and index, which measured several times slower than copying the pages (figures in
the README's "Backup and restore"), and the servers' CPU is what a backup competes for.

The copy is written to a hidden file beside FILE (created owner-only, 0600, as the database
itself), checked with `PRAGMA integrity_check`, flushed to disk, then put in place: with a hard
link, which fails if FILE appeared meanwhile, unless `--force` asked to replace it. So FILE is
either absent or a whole, checked copy; never half of one.

PostgreSQL is refused with the recipe for its own tool, pg_dump: it already takes a consistent
copy without blocking writers, and it must be the version of the server (or newer), which only
the operator's machine knows.

Exit status: 0 on success, with what was copied (path, size, schema version) on stderr; 2, with
one line on stderr and FILE untouched, otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from .config import ENV, Config
from .store.locator import describe, is_postgres, sqlite_path

FILE_MODE = 0o600
"""The copy holds what the database holds (every tenant's money, the hashes of the keys)."""

BUSY_TIMEOUT_MS = 10_000
"""How long the source connection waits for a lock: a reader in WAL mode waits only while a
connection recovers the WAL or resets it, which takes milliseconds."""


def pg_dump_recipe(url: str) -> str:
    """The PostgreSQL backup and restore commands, with the URL shown without its password."""
    shown = describe(url)
    return (f"pg_dump --format=custom --file=zapbilling.dump '{shown}' (add the password as PGPASSWORD or in "
            "~/.pgpass; pg_dump takes a consistent copy while servers write); to restore, into an empty database "
            "with the servers stopped: pg_restore --no-owner --exit-on-error --dbname='postgresql://user@host:port/newdb' "
            "zapbilling.dump")


def add_parser(sub: Any, db_default: str) -> None:
    """The `backup` subcommand, on cli.py's subparsers."""
    p = sub.add_parser("backup", help="copy a SQLite database while servers write to it", description=(
        "Copy a SQLite database to FILE as of one moment, while servers keep writing to it (SQLite's online "
        "backup API: the servers are not stopped nor held up). The copy is checked (PRAGMA integrity_check) and "
        "created owner-only (0600). To restore, stop the servers and put the copy in place of the database file "
        "(removing the old file's -wal and -shm). PostgreSQL: use pg_dump (the error message gives the commands)."))
    p.add_argument("--db", default=db_default, metavar="DB",
                   help=f"the SQLite database: a path or sqlite:///path (default {Config.db}; env {ENV['db']})")
    p.add_argument("--to", dest="target", required=True, metavar="FILE",
                   help="the copy to write, in an existing folder; it must not exist (required)")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists (default off)")


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"zapbilling: error: {message}\n")
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    if is_postgres(args.db):
        fail(f"backup copies SQLite files; for PostgreSQL use its own tool: {pg_dump_recipe(args.db)}")
    try:
        source = sqlite_path(args.db)
    except ValueError as exc:
        fail(str(exc))
    target = Path(args.target)
    if not Path(source).is_file():
        fail(f"cannot back up {source}: no such database file")
    if target.exists() and not args.force:
        fail(f"{target} exists: choose another file, or pass --force to replace it")
    if target.exists() and Path(source).resolve() == target.resolve():
        fail(f"{target} is the database itself")
    if not target.parent.is_dir():
        fail(f"cannot write {target}: no such folder {target.parent}")
    try:
        took, version = backup(source, target, force=args.force)
    except FileExistsError:
        fail(f"{target} appeared while the copy was made: nothing written")
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot back up {source} to {target}: {exc}")
    size = target.stat().st_size
    sys.stderr.write(f"backed up {source} to {target}: {size:,} bytes, schema version {version}, "
                     f"integrity ok, in {took:.2f} s\n")
    return 0


def backup(source: str, target: Path, *, force: bool = False) -> tuple[float, int]:
    """Copy `source` to `target` as described above; returns (seconds the copy took, its schema
    version). Raises FileExistsError if `target` exists and not `force`, sqlite3.Error for a
    source that is not a database or a copy that fails its check."""
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    try:
        started = time.monotonic()
        _copy(source, partial)
        took = time.monotonic() - started
        version = _check(partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        if force:
            os.replace(partial, target)
        else:
            os.link(partial, target)  # fails, atomically, if target exists
        _fsync_dir(target.parent)
        return took, version
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _copy(source: str, partial: Path) -> None:
    # mode=ro: the backup never creates, migrates nor writes the database it copies.
    src = sqlite3.connect(f"file:{_uri_path(source)}?mode=ro", uri=True, isolation_level=None)
    try:
        src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst, pages=-1)  # -1: every page in one step, so one read transaction
            # The copy is a file on its own: no WAL beside it to lose when it is moved.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _check(path: Path) -> int:
    """PRAGMA integrity_check on the copy (pages, and every index against its table); returns
    its schema version."""
    conn = sqlite3.connect(f"file:{_uri_path(str(path))}?mode=ro", uri=True)
    try:
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"the copy fails its integrity check: {'; '.join(problems[:5])}")
        try:
            (version,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        except sqlite3.OperationalError:
            raise sqlite3.DatabaseError("it is not a zapbilling database (no schema_migrations table)") from None
        return int(version)
    finally:
        conn.close()


def _uri_path(path: str) -> str:
    """A file path as the path of a file: URI (`?` and `#` would end it)."""
    return os.path.abspath(path).replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def _fsync_dir(folder: Path) -> None:
    """Make the new name durable too, where the platform lets a folder be fsynced."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
