"""`zapbilling copy --from PATH --to postgresql://user:password@host:port/dbname`: move an embedded
SQLite database into an empty PostgreSQL one, to go from one machine to several servers on
one PostgreSQL. Every row of every table moves with its ids, so API keys keep working, stored
answers of idempotency keys replay, and every listing answers the same on both.

The work and its SQL are the store's (store/copy.py): the source is read-only and read as of
one moment; the target is migrated, checked empty and filled in one transaction, all or
nothing. Stop the servers on the source first: what they write after the copy's moment is not
copied.

Exit status: 0 on success, with a summary (rows per table) on stderr and nothing on stdout;
2, with one line on stderr and nothing written, for a bad argument, a source that is not a
zapbilling database at this version's schema, a target that cannot be reached or refuses us,
or a target that already holds a row.
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from typing import Any, NoReturn
from urllib.parse import urlsplit


def add_parser(sub: Any) -> None:
    """The `copy` subcommand, on cli.py's subparsers."""
    p = sub.add_parser("copy", help="copy a SQLite database into an empty PostgreSQL one", description=(
        "Copy every row of a zapbilling SQLite database (keys, ledger, balances, idempotency records, meters, events,"
        " grants, pricing rules, holds) into an empty PostgreSQL database, in one transaction. The source is only read."
        " Stop the servers on the source first."))
    p.add_argument("--from", dest="source", required=True, metavar="PATH",
                   help="the SQLite database: a path or sqlite:///path (required)")
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="the PostgreSQL database: postgresql://user:password@host:port/dbname; it must hold no row (required)")


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"zapbilling: error: {message}\n")
    raise SystemExit(2)


def check_url(url: str) -> None:
    """A PostgreSQL URL we can read, or fail naming the fault (never echoing the URL, which may
    hold a password)."""
    from .store import is_postgres

    if not is_postgres(url):
        fail("--to must be a PostgreSQL URL: postgresql://user:password@host:port/dbname")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError as exc:
        fail(f"malformed --to URL: {exc}")
    if not parts.path.strip("/"):
        fail("malformed --to URL: it names no database (postgresql://user:password@host:port/dbname)")


def run(args: argparse.Namespace) -> int:
    from .store import Unavailable, is_postgres, sqlite_path
    from .store.copy import CopyRefused, copy_database

    if is_postgres(args.source):
        fail("--from must be a SQLite database (a path or sqlite:///path): the copy moves SQLite into PostgreSQL")
    try:
        source = sqlite_path(args.source)
    except ValueError as exc:
        fail(f"invalid --from: {exc}")
    check_url(args.target)
    try:
        report = asyncio.run(copy_database(source, args.target))
    except (CopyRefused, Unavailable) as exc:
        fail(str(exc))
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot copy from {source}: {exc}; nothing was written")
    except KeyboardInterrupt:
        sys.stderr.write("zapbilling: copy interrupted; nothing was written\n")
        return 130
    rate = report.total / report.seconds if report.seconds > 0 else 0.0
    lines = [f"copied {source} to {report.target} (schema version {report.version}): {report.total:,} rows"
             f" in {report.seconds:.2f} s ({rate:,.0f} rows/s)"]
    lines += [f"  {table:<20} {rows:>12,}" for table, rows in report.rows.items()]
    sys.stderr.write("\n".join(lines) + "\n")
    return 0
