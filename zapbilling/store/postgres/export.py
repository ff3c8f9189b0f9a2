"""Whole-tenant reads for `zapbilling export` on PostgreSQL (as ../sqlite/export.py): every row
of one history table of a tenant, in creation order, in batches of bounded size, so that
exporting ten million rows takes the memory of one batch.

Creation order is `seq` (each table's identity primary key): a batch is the next `batch` rows
after the last seq of the previous one (keyset, never OFFSET), one statement each. The whole
walk is one REPEATABLE READ read-only transaction (`snapshot()`), so an export is the tenant's
history as of one moment even while servers keep writing (a hold's status is the status at
`now`, computed in the query as the SQLite store does).

The walks go along each table's primary key (seq) with the tenant as a filter, except for
holds, which have a (tenant, seq) index; for one tenant among many an export reads each table
once at most, never more than a batch at a time.

The rows are shaped here, as the SQLite store's LedgerRow, GrantChange, MeterEventRow and
HoldRow, column for column, so that this module depends on no other query area's module.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Sequence

from ..base import Row
from ..rows import CHANGE_COLUMNS as _CHANGE, EVENT_COLUMNS as _EVENT, HOLD_COLUMNS as _HOLD, LEDGER_COLUMNS as _LEDGER, change_row, event_row, hold_row, ledger_row
from .connection import PgBase



# table: (the columns, the row as the store returns it)
EXPORTS: dict[str, tuple[str, Callable[[Sequence[Any]], Any]]] = {
    "ledger": (_LEDGER, ledger_row),
    "credit_transactions": (_CHANGE, change_row),
    "meter_events": (_EVENT, event_row),
    "holds": (_HOLD, hold_row),
}


def export_sql(table: str, since: bool) -> str:
    """One batch of `table`: parameters $1 tenant, $2 the last seq seen (0 at first), $3 the
    batch size, then $4 since (when `since`), then now (holds only: the status at that
    instant). `export_params` gives them in that order."""
    columns, _ = EXPORTS[table]
    where = "tenant = $1 AND seq > $2" + (" AND created_at >= $4" if since else "")
    columns = columns.format(now=f"${5 if since else 4}")
    return f"SELECT seq, {columns} FROM {table} WHERE {where} ORDER BY seq LIMIT $3"


def export_params(table: str, since: int | None, now: int) -> tuple[int, ...]:
    """The parameters export_sql's statement takes after tenant, after and batch."""
    return (*(() if since is None else (since,)), *((now,) if table == "holds" else ()))


class ExportQueries(PgBase):
    async def tenant_id(self, org: str, mode: str) -> int | None:
        """The tenant of an org and mode, or None if no key was ever made for it."""
        rows = await self._read("SELECT id FROM tenants WHERE org = $1 AND mode = $2", org, mode)
        return rows[0][0] if rows else None

    async def export_rows(
        self, tenant: int, table: str, since: int | None, now: int, batch: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """As the interface says (base.py, Store.export_rows): one REPEATABLE READ snapshot
        throughout, keyset batches by seq."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        sql, make = export_sql(table, since is not None), EXPORTS[table][1]
        extra = export_params(table, since, now)
        after = 0
        async with self.snapshot():
            while True:
                rows = await self._read(sql, tenant, after, batch, *extra)
                if not rows:
                    return
                after = rows[-1][0]
                yield [make(tuple(r)[1:]) for r in rows]
                if len(rows) < batch:
                    return
