"""Which range of which index a filtered page of one user's ledger walks (listTransactions),
the same on every backend; each backend's ledger.py runs the statements built here.

Three ranges, each ordered (created_at, seq) newest first, so a page is the first `limit`
rows of one walk whichever is taken, and dates and the page's cursor are bounds of it
(migration 0008):

- `history`: the user's rows (ledger_history; on SQLite, which has no such index since migration
  19, the merge of the user's two `type` ranges, tested as the merge yields them). Every other
  filter is a test on each row walked.
- `type`: the user's rows of one type (ledger_by_type).
- `tags`: the user's rows bearing one tag (the ledger_tags table, joined to the ledger by seq).
  Rows tagged exactly '' or 'api-usage' have no entries there (UNSPLIT_TAGS), so a filter on
  one of those two tags walks `type` or `history` with a test on `tags` instead.

A walk costs the rows it passes over until it has a page of matches: an unfiltered page, or one
filtered by a type or a tag the user has many rows of, costs the same at a million rows as at a
thousand; a rare type or tag is a range of its own, no longer a million rows tested. With both a
type and a tag, each range's size (up to PROBE rows) is counted first in one statement and the
smaller walked: a common tag with a rare type, or a rare tag with a common type, both stay fast.
"""
from __future__ import annotations

from typing import Any, Callable

from .base import LEDGER_TYPES, LedgerFilter
from .rows import LEDGER_COLUMNS

UNSPLIT_TAGS = frozenset({"", "api-usage"})
"""Tags whose rows get no ledger_tags entries when they are a row's only tag (the migration's
trigger says the same): a deposit's default and every usage withdrawal's."""

PROBE = 2000
"""Rows counted at most in each candidate range before walking the smaller: both ranges counted
to the full 2,000 took 0.25 ms on SQLite (measured, one user's 200,000 rows), a small part of a
page."""

ROW = LEDGER_COLUMNS
_JOINED_ROW = ", ".join(f"l.{c.strip()}" for c in LEDGER_COLUMNS.split(","))
"""The same columns of a ledger row `l` read by its seq (the tags walk's, a tested history page's)."""


def never_matches(where: LedgerFilter) -> bool:
    """A tag holding a comma is none of a row's comma-separated tags: no row matches."""
    return where.tag is not None and "," in where.tag


def indexed_tag(where: LedgerFilter) -> bool:
    return where.tag is not None and where.tag not in UNSPLIT_TAGS


class Statement:
    """One statement's text and its parameters, built in order; `mark(n)` spells the n-th
    parameter in the dialect (`?` on SQLite, `$n` on PostgreSQL)."""

    def __init__(self, mark: Callable[[int], str]):
        self.mark = mark
        self.params: list[Any] = []
        self.sql = ""

    def p(self, value: Any) -> str:
        self.params.append(value)
        return self.mark(len(self.params))


class Dialect:
    """What differs between the backends' statements."""

    def __init__(self, mark: Callable[[int], str], tag_test: str, history: str | None, by_type: str, tagged: str):
        self.mark = mark
        self.tag_test = tag_test
        """A condition true when `tags` holds the tag `{}` (a parameter) as one of its tags."""
        self.history = history
        """The ledger as the `history` walk names it, or None where the user's whole history has
        no index of its own (SQLite since migration 19): the walk is then the merge of the
        user's two `type` ranges."""
        self.by_type = by_type
        self.tagged = tagged
        """The tags walk's FROM: ledger_tags `t` as the outer loop, each entry's ledger row `l`
        found by its seq."""


def _range(s: Statement, prefix: str, where: LedgerFilter, cursor: tuple[int, int] | None) -> str:
    """The bounds on (created_at, seq) every walk shares: the page's cursor and the dates."""
    sql = ""
    if cursor is not None:
        sql += f" AND ({prefix}created_at, {prefix}seq) < ({s.p(cursor[0])}, {s.p(cursor[1])})"
    if where.created_from is not None:
        sql += f" AND {prefix}created_at >= {s.p(where.created_from)}"
    if where.created_before is not None:
        sql += f" AND {prefix}created_at < {s.p(where.created_before)}"
    return sql


def probe(d: Dialect, tenant: int, user: str, where: LedgerFilter, cursor: tuple[int, int] | None) -> Statement:
    """One row: how many rows (up to PROBE) the `tags` and the `type` ranges hold."""
    s = Statement(d.mark)
    tags = (f"SELECT 1 FROM ledger_tags WHERE tenant = {s.p(tenant)} AND user_id = {s.p(user)} AND tag = {s.p(where.tag)}"
            f"{_range(s, '', where, cursor)} LIMIT {s.p(PROBE)}")
    typed = (f"SELECT 1 FROM {d.by_type} WHERE tenant = {s.p(tenant)} AND user_id = {s.p(user)} AND type = {s.p(where.type)}"
             f"{_range(s, '', where, cursor)} LIMIT {s.p(PROBE)}")
    s.sql = f"SELECT (SELECT COUNT(*) FROM ({tags}) a), (SELECT COUNT(*) FROM ({typed}) b)"
    return s


def page(d: Dialect, walk: str, tenant: int, user: str, where: LedgerFilter, cursor: tuple[int, int] | None,
         limit: int) -> Statement:
    """The page's statement along `walk` ('history', 'type' or 'tags'): `limit` rows (the
    caller asks one more than it shows, to tell whether there are more)."""
    s = Statement(d.mark)
    if walk == "tags":
        sql = (f"SELECT {_JOINED_ROW} FROM {d.tagged}"
               f" WHERE t.tenant = {s.p(tenant)} AND t.user_id = {s.p(user)} AND t.tag = {s.p(where.tag)}")
        sql += _range(s, "t.", where, cursor)
        if where.type is not None:
            sql += f" AND l.type = {s.p(where.type)}"
        if where.currency is not None:
            sql += f" AND l.currency = {s.p(where.currency)}"
        sql += f" ORDER BY t.created_at DESC, t.seq DESC LIMIT {s.p(limit)}"
    elif walk == "history" and d.history is None:
        # The merge of the user's two type ranges, each walked newest first: a compound SELECT
        # whose ORDER BY SQLite answers by merging its arms as they go (no sort), the LIMIT
        # stopping both. `seq` is a column of its own at the end, for the ORDER BY to name;
        # ledger_row reads the columns before it. A test on the rows (a currency, a tag that
        # has no ledger_tags entries) goes outside the merge, on the rows as it yields them:
        # inside each arm, an arm of a type with no match below the cursor would walk its whole
        # range before the merge could answer (a review measured 459 ms a page at 1,000,000
        # rows, against 2.9 ms for the single index's walk). `LIMIT -1` keeps SQLite from
        # pushing the test down into the arms (it pushes a WHERE into a subquery without a
        # LIMIT); the merge is then a co-routine the outer query reads in its order, so a page
        # costs the rows passed over until it has `limit` matches, as the one-index walk did.
        #
        # A tested merge carries only what its order and the tests read, and the page's rows
        # are read whole by seq after the test, where every row passed over was read whole out
        # of the merge (one user's 1,000,000 rows, 1% eur deposits: a page of a currency never
        # used 994 -> 550 ms, `currency=eur` 9.7 -> 5.9 ms, best of 3 and 20). CROSS JOIN:
        # the left side is the outer loop, so the rows come in the merge's order, as the tags
        # walk's do.
        tests = _tests(d, where)
        columns = "created_at, seq, currency, tags" if tests else f"{ROW}, seq"
        merged = " UNION ALL ".join(_ranged(s, d.by_type, tenant, user, where, cursor, t, columns) for t in LEDGER_TYPES)
        merged += " ORDER BY created_at DESC, seq DESC"
        if tests:
            sql = (f"SELECT {_JOINED_ROW}, l.seq FROM (SELECT seq FROM ({merged} LIMIT -1) WHERE {_tested(s, tests)}"
                   f" LIMIT {s.p(limit)}) m CROSS JOIN ledger l ON l.seq = m.seq")
        else:
            sql = f"{merged} LIMIT {s.p(limit)}"
    else:
        table = d.by_type if walk == "type" else d.history
        assert table is not None, "a dialect without a history index merges the type ranges (above)"
        sql = _ranged(s, table, tenant, user, where, cursor, where.type if walk == "type" else None)
        tests = _tests(d, where)
        if tests:
            sql += f" AND {_tested(s, tests)}"
        sql += f" ORDER BY created_at DESC, seq DESC LIMIT {s.p(limit)}"
    s.sql = sql
    return s


def _ranged(s: Statement, table: str, tenant: int, user: str, where: LedgerFilter, cursor: tuple[int, int] | None,
            type_: str | None, columns: str = ROW) -> str:
    """The rows of one range of `table` (of one type when `type_` is given), unordered and
    untested: the walks' common part."""
    sql = f"SELECT {columns} FROM {table} WHERE tenant = {s.p(tenant)} AND user_id = {s.p(user)}"
    if type_ is not None:
        sql += f" AND type = {s.p(type_)}"
    return sql + _range(s, "", where, cursor)


def _tests(d: Dialect, where: LedgerFilter) -> list[tuple[str, Any]]:
    """The filter's tests on each row walked (its currency, its tag), each a condition on `{}`
    and the parameter that goes there; none for a filter of type and dates alone. Known before
    the walk's text is built, which carries less through the merge when there are some."""
    tests: list[tuple[str, Any]] = []
    if where.currency is not None:
        tests.append(("currency = {}", where.currency))
    if where.tag is not None:
        tests.append((d.tag_test, where.tag))
    return tests


def _tested(s: Statement, tests: list[tuple[str, Any]]) -> str:
    """The tests as one condition, their parameters taken now: the caller places it after
    every parameter before it in the statement's text."""
    return " AND ".join(test.format(s.p(value)) for test, value in tests)


def walk_for(where: LedgerFilter, sizes: tuple[int, int] | None = None) -> str:
    """The walk for `where`; `sizes` (the `tags` and `type` ranges' counts from `probe`) are
    needed only when `needs_probe(where)`."""
    if indexed_tag(where):
        if where.type is None:
            return "tags"
        assert sizes is not None, "a type and a tag: probe first"
        return "type" if sizes[1] < sizes[0] else "tags"
    return "type" if where.type is not None else "history"


def needs_probe(where: LedgerFilter) -> bool:
    return indexed_tag(where) and where.type is not None
