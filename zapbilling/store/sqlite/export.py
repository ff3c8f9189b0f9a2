"""Whole-tenant reads for `zapbilling export`: every row of one history table of a tenant, in
creation order, read in batches of bounded size, so that exporting ten million rows takes the
memory of one batch.

Creation order is insertion order, `seq` (each table's INTEGER PRIMARY KEY): a batch is the
next `batch` rows after the last seq of the previous one (keyset, never OFFSET), one statement
each. The whole walk is one read transaction (`snapshot()`), so an export is the tenant's
history as of one moment even while a server keeps writing (a hold's status, in particular,
is the status at that moment).

The walks go along the rowid (`NOT INDEXED`: no index may tempt the planner into reading a
tenant's rows in another order and sorting them) except for holds, which have a
(tenant, seq) index. The rowid walk passes over other tenants' rows: for one tenant among many,
an export reads the whole table once (never more, and never more than a batch in memory).
`since` is a condition on that walk, not a seek.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Callable

from ..base import Row
from ..rows import CHANGE_COLUMNS as _CHANGE, EVENT_COLUMNS as _EVENT, LEDGER_COLUMNS as _ROW, change_row, event_row, hold_row, ledger_row
from .connection import SqliteBase
from .holds import _HOLD


# table: (its rows in creation order as FROM ..., the columns, the row as the store returns it)
EXPORTS: dict[str, tuple[str, str, Callable[[tuple[Any, ...]], Any]]] = {
    "ledger": ("ledger NOT INDEXED", _ROW, ledger_row),
    "credit_transactions": ("credit_transactions NOT INDEXED", _CHANGE, change_row),
    "meter_events": ("meter_events NOT INDEXED", _EVENT, event_row),
    "holds": ("holds INDEXED BY holds_tenant", _HOLD, hold_row),
}


def export_sql(table: str, since: bool) -> str:
    """One batch of `table`: parameters :tenant, :after (the last seq seen, 0 at first),
    :since (when `since`), :now (holds: the status at that instant) and :batch."""
    source, columns, _ = EXPORTS[table]
    where = "tenant = :tenant AND seq > :after" + (" AND created_at >= :since" if since else "")
    return f"SELECT seq, {columns} FROM {source} WHERE {where} ORDER BY seq LIMIT :batch"


class ExportQueries(SqliteBase):
    async def tenant_id(self, org: str, mode: str) -> int | None:
        """The tenant of an org and mode, or None if no key was ever made for it."""
        rows = await self._read("SELECT id FROM tenants WHERE org = ? AND mode = ?", (org, mode))
        return rows[0][0] if rows else None

    async def export_rows(
        self, tenant: int, table: str, since: int | None, now: int, batch: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """Every row of `table` (ledger, credit_transactions, meter_events, holds) of `tenant`
        created at or after `since` (None: all), in creation order, as lists of at most `batch`
        rows shaped as the table's other reads return them (LedgerRow, GrantChange,
        MeterEventRow, HoldRow with its status at `now`). All from one snapshot: iterate to
        the end, or close the iterator (contextlib.aclosing) to end it early."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        sql, make = export_sql(table, since is not None), EXPORTS[table][2]
        params: dict[str, Any] = {"tenant": tenant, "after": 0, "since": since, "now": now, "batch": batch}
        async with self.snapshot():
            while True:
                rows = await self._read(sql, params)
                if not rows:
                    return
                params["after"] = rows[-1][0]
                yield [make(r[1:]) for r in rows]
                if len(rows) < batch:
                    return
