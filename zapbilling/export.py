"""`zapbilling export KIND --db URL --org ORG --mode MODE [--since T] [--format jsonl|csv]`: one
tenant's ledger, credit journal, meter events or holds on stdout, in creation order, for an
auditor or a warehouse load.

Each row has the fields the API answers with (billing/'s own result functions format it:
`transaction_result`, `credit_transaction_result`, `hold_result`, `meter_event_result`), so an
export and a listing agree field for field. Memory is constant: the store hands the rows over
in batches (store/export.py: keyset on seq, one snapshot), and each batch is written before the
next is read.

- `jsonl` (default): one JSON object per line, optional fields absent as in the API.
- `csv`: a header row, then one row per record; the columns are the API row's fields in the
  schema's order, an absent optional field is an empty cell, and Data fields (`metadata`,
  `dimensions`) are JSON text.

`--since` (inclusive) is an RFC 3339 time or a bare date (its 00:00 UTC) compared with each
row's `createdAt`: for meter events that is when the event was recorded, not its own
`timestamp`. Creation order is the order rows were written (their seq); concurrent calls can
write a row whose createdAt is a few milliseconds older than the row before it, so an
incremental load by `--since <last createdAt seen>` should overlap a little and skip ids it has.

Exit status: 0 on success; 2, with one line on stderr, for a bad argument, a database that
cannot be read, or an org and mode that has never had a key (so has no rows); 1 when stdout is
closed early (`| head`).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from .store.base import Unavailable
from .store.locator import describe, is_postgres, sqlite_path

KINDS = {"ledger": "ledger", "credit-transactions": "credit_transactions", "meter-events": "meter_events", "holds": "holds"}
"""The command's kinds and the store's tables."""
FORMATS = ("jsonl", "csv")
BATCH = 1000
"""Rows per read: the memory of an export."""

COLUMNS = {
    # The schema's Transaction, CreditTransaction and Hold structs, field for field (a test
    # checks); a meter event is its MeterEventInput with the id and the recording time.
    "ledger": ("transactionId", "user", "currency", "type", "amount", "tags", "notes", "metadata", "createdAt",
               "expiresAt", "originalTransactionId", "holdId", "keyId"),
    "credit-transactions": ("id", "grantId", "userId", "currency", "type", "amount", "remainingAfter", "burnId",
                            "meterId", "createdAt", "keyId"),
    "meter-events": ("id", "meterId", "userId", "value", "timestamp", "idempotency", "dimensions", "createdAt"),
    "holds": ("holdId", "user", "currency", "amount", "status", "expiresAt", "createdAt", "capturedAmount",
              "transactionId", "requestId", "metadata", "settledAt"),
}


def add_parser(sub: Any, db_default: str) -> None:
    """The `export` subcommand, on cli.py's subparsers."""
    p = sub.add_parser("export", help="write one org and mode's history to stdout (jsonl or csv)", description=(
        "Write one org and mode's ledger, credit journal, meter events or holds to stdout, oldest first, with the "
        "fields the API's rows have (csv: a header row, absent fields empty, metadata and dimensions as JSON text). "
        "Rows are read in batches: memory stays the same whatever the size."))
    p.add_argument("kind", choices=KINDS, help="what to export")
    p.add_argument("--db", default=db_default, help="the database: a path, sqlite:///path or a postgresql:// URL"
                                                    " (default zapbilling.db; env ZAPBILLING_DB)")
    p.add_argument("--org", required=True, help="the organisation whose rows to write (required)")
    p.add_argument("--mode", required=True, choices=("test", "live"), help="test or live (required)")
    p.add_argument("--since", help="only rows whose createdAt is at or after this RFC 3339 time or date (YYYY-MM-DD,"
                                   " from 00:00 UTC); meter events: when recorded, not their timestamp (default: every row)")
    p.add_argument("--format", default="jsonl", choices=FORMATS, help="jsonl or csv (default jsonl)")


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"zapbilling: error: {message}\n")
    raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    from .times import parse_ts, system_clock

    try:
        path = args.db if is_postgres(args.db) else sqlite_path(args.db)
    except ValueError as exc:
        fail(str(exc))
    if not args.org.strip():
        fail("--org must not be empty")
    try:
        since = parse_ts(args.since) if args.since is not None else None
    except ValueError:
        fail(f"invalid --since {args.since!r}: expected an RFC 3339 time or a date YYYY-MM-DD")
    if not is_postgres(path) and not Path(path).is_file():
        fail(f"cannot export from {args.db}: no such database file")
    out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", errors="backslashreplace", newline="")
    try:
        rows = asyncio.run(_export(path, args.org, args.mode, args.kind, since, args.format, out, system_clock()))
        out.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more, and let no flush at exit complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Unavailable as exc:
        fail(str(exc))
    except (OSError, sqlite3.Error) as exc:
        fail(f"cannot export from {describe(args.db)}: {exc}")
    except KeyboardInterrupt:
        return 130
    finally:
        with contextlib.suppress(ValueError):
            out.detach()  # sys.stdout keeps its buffer
    if rows is None:
        fail(f"no org {args.org!r} in mode {args.mode} in {describe(args.db)}: no key was ever made for it, so it has no rows")
    sys.stderr.write(f"exported {rows} {args.kind} rows of {args.org} ({args.mode})\n")
    return 0


async def _export(path: str, org: str, mode: str, kind: str, since: int | None, fmt: str, out: io.TextIOBase,
                  now: int) -> int | None:
    """Rows written, or None when the org and mode is unknown."""
    from .store import make_store

    store = make_store(path)
    await store.open()
    try:
        tenant = await store.tenant_id(org, mode)
        if tenant is None:
            return None
        return await write_rows(store, tenant, kind, since, now, fmt, out)
    finally:
        await store.close()


def formatter(kind: str) -> Callable[[Any], dict[str, Any]]:
    """The API's own formatting of one row of `kind`."""
    if kind == "ledger":
        from .billing.ledger import transaction_result
        return transaction_result
    if kind == "credit-transactions":
        from .billing.grants import credit_transaction_result
        return credit_transaction_result
    if kind == "meter-events":
        from .billing.metering import meter_event_result
        return meter_event_result
    if kind == "holds":
        from .billing.holds import hold_result
        return hold_result
    raise ValueError(f"unknown kind {kind!r}")


async def write_rows(store: Any, tenant: int, kind: str, since: int | None, now: int, fmt: str, out: Any) -> int:
    """Write every row of `kind` of the tenant to the text stream `out`, one batch at a time;
    returns how many. `out` should not translate newlines (newline="")."""
    result = formatter(kind)
    columns = COLUMNS[kind]
    # ensure_ascii=False keeps text readable; the only text that cannot be UTF-8 (a lone
    # surrogate in a Data field, from a \ud800 escape in a JSON request) sits inside a JSON
    # string, where the stream's backslashreplace writes it as that same valid escape.
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    writer = None
    if fmt == "csv":
        import csv

        writer = csv.writer(out)
        writer.writerow(columns)
    count = 0
    async with contextlib.aclosing(store.export_rows(tenant, KINDS[kind], since, now, BATCH)) as batches:
        async for batch in batches:
            if writer is None:
                out.write("".join(dumps(result(r)) + "\n" for r in batch))
            else:
                writer.writerows(_cells(result(r), columns, dumps) for r in batch)
            count += len(batch)
    return count


DATA = frozenset({"metadata", "dimensions"})
"""The schema's Data fields: any JSON value, written to a CSV cell as JSON text."""


def _cells(row: dict[str, Any], columns: tuple[str, ...], dumps: Callable[[Any], str]) -> list[Any]:
    return ["" if c not in row else dumps(row[c]) if c in DATA else row[c] for c in columns]
