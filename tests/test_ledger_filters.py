"""listTransactions' filters walk ranges of their own (migration 0008, store/ledger_filters.py):
the rows of one type (ledger_by_type), the rows bearing one tag (ledger_tags, kept by a
trigger). Whatever range a page walks, the listing is exactly the unfiltered listing filtered
by the contract's rules: currency and type equal, `tag` one of the row's comma-separated tags,
createdAfter inclusive, createdBefore exclusive, newest first, paged by startingAfter. Each
check compares every page of a filtered listing with that, on SQLite and PostgreSQL; and
getUsage lists usage withdrawals only. check_invariants (which compares ledger_tags with the
ledger's split tags) holds after every test.
"""
from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest
from conftest import BACKEND, Api, ok
from invariants import check_invariants, find_violations
import pg

from zapbilling.app import STORE, sweep_once
from zapbilling.store.base import LedgerFilter
from zapbilling.store.ledger_filters import PROBE, walk_for
from zapbilling.times import parse_ts

ALICE, BOB = "hanzo/alice", "hanzo/bob"

# Deposits' tags: several per row, a tag that is a prefix ('pro') or a part ('mo') of another
# ('promo'), the same tag twice in one row, an empty tag between commas, a tag with a space,
# the defaults '' and 'api-usage' alone and among others, and one tag on every row of a kind
# ('bulk') next to rarer ones.
DEPOSIT_TAGS = [
    "promo", "pro", "promo,trial", "trial,promo,vip", "vip", "mo", "", "api-usage", "api-usage,promo",
    "bulk", "bulk,rare", "a,,b", "dup,dup", "credit-expired", "with space", "bulk", "bulk,promo",
]


@pytest.fixture(autouse=True)
async def invariants_hold_after_the_test(server, db_path):
    yield
    check_invariants(db_path)


async def make_history(api: Api, clock: Any, store: Any) -> None:
    """ALICE's rows of every kind in two currencies, some at equal times (the seq breaks the
    tie), with deposits, usage withdrawals and forfeits (withdrawals tagged credit-expired);
    BOB's rows carry the same tags and never show."""
    for i, tags in enumerate(DEPOSIT_TAGS * 2):
        currency = "eur" if i % 3 == 0 else "usd"
        await ok(api, "deposit", {"user": ALICE, "amount": 100 + i, "currency": currency, "tags": tags})
        if i % 4 == 0:
            await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "currency": currency, "model": "m"})
        if i % 5 == 0:  # expires in a day; the sweep forfeits it below
            await ok(api, "deposit", {"user": ALICE, "amount": 9, "currency": currency, "tags": "promo,expiring", "expiresIn": 1})
        if i % 2:
            clock.advance(seconds=1)  # pairs of rows share a time
    await ok(api, "deposit", {"user": BOB, "amount": 5, "tags": "promo,rare,bulk"})
    clock.advance(days=2)
    await sweep_once(store, clock())
    await ok(api, "recordUsage", {"user": ALICE, "amount": 3, "model": "m"})


async def walk(api: Api, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every row of a listing, page by page (startingAfter the last row of the page before);
    each page but the last is full and says there is more, the last says there is not."""
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page = await ok(api, "listTransactions", {"user": ALICE, "limit": limit, **params,
                                                  **({"startingAfter": after} if after else {})})
        assert page["count"] == len(page["transactions"]) <= limit
        rows += page["transactions"]
        if not page["hasMore"]:
            return rows
        assert page["count"] == limit
        after = page["transactions"][-1]["transactionId"]


def matches(row: dict[str, Any], f: dict[str, Any]) -> bool:
    at = parse_ts(row["createdAt"])
    return (
        ("currency" not in f or row["currency"] == f["currency"])
        and ("type" not in f or row["type"] == f["type"])
        and ("tag" not in f or f["tag"] in row["tags"].split(","))
        and ("createdAfter" not in f or at >= parse_ts(f["createdAfter"]))
        and ("createdBefore" not in f or at < parse_ts(f["createdBefore"]))
    )


@pytest.fixture
async def history(server, api, clock):
    await make_history(api, clock, server.app[STORE])
    everything = await walk(api, 1000)
    assert len(everything) > 50
    # newest first: createdAt never increases down the list, and equal times occur
    times = [parse_ts(r["createdAt"]) for r in everything]
    assert times == sorted(times, reverse=True) and len(set(times)) < len(times)
    return everything


TAGS = ["promo", "pro", "mo", "trial", "vip", "rare", "bulk", "api-usage", "credit-expired", "dup", "b",
        "with space", "expiring", "nowhere", "promo,trial", "prom"]


def expected(everything: list[dict[str, Any]], **f: Any) -> list[str]:
    return [r["transactionId"] for r in everything if matches(r, f)]


async def test_a_tag_alone_lists_exactly_the_rows_bearing_it(api, history):
    for tag in TAGS:
        want = expected(history, tag=tag)
        got = [r["transactionId"] for r in await walk(api, 3, tag=tag)]
        assert got == want, tag
    # a few counts stated outright, so the oracle itself is pinned
    assert len(expected(history, tag="pro")) == 2                  # not 'promo'
    assert len(expected(history, tag="dup")) == 2                  # 'dup,dup' once per row
    assert len(expected(history, tag="promo,trial")) == 0          # a comma is in no tag
    assert len(expected(history, tag="credit-expired")) == 2 + 3   # the deposits so tagged, and three forfeits (usage spent the rest)


async def test_a_tag_of_a_thousand_multibyte_characters_is_written_and_one_of_255_is_found(api):
    """A deposit's tags may be 1,000 characters, one tag all of them. In a script of three- and
    four-byte characters (varied, so that PostgreSQL cannot compress the index key) that was past
    the B-tree's key bound on PostgreSQL: the deposit was refused with a 500 (migration 18).
    Now a tag longer than the filter's 255 characters has no ledger_tags entry (none could be
    asked for) and the row is written; a tag of 255 such characters is listed by its filter."""
    long = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(1000))
    wide = "".join(chr(0x1F300 + (i * 31) % 700) for i in range(255))  # four bytes each in UTF-8
    first = await ok(api, "deposit", {"user": ALICE, "amount": 5, "tags": long})
    second = await ok(api, "deposit", {"user": ALICE, "amount": 7, "tags": f"{wide},vip"})
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 12
    listed = await ok(api, "listTransactions", {"user": ALICE, "tag": wide})
    assert [r["transactionId"] for r in listed["transactions"]] == [second["transactionId"]]
    assert (await ok(api, "listTransactions", {"user": ALICE, "tag": "vip"}))["count"] == 1
    everything = await ok(api, "listTransactions", {"user": ALICE})
    assert [r["tags"] for r in everything["transactions"]] == [f"{wide},vip", long]
    assert first["tags"] == long


async def test_the_empty_tag_is_one_too(server, api, history):
    """REST reads `tag=` as no filter; the store lists the rows with an empty tag ('', 'a,,b')."""
    store = server.app[STORE]
    principal = await store.authenticate(api.key)
    for type_ in (None, "deposit", "withdraw"):
        rows, more = await store.ledger_page(principal.tenant, ALICE, LedgerFilter(tag="", type=type_), 1000, None)
        assert [r["id"] for r in rows] == expected(history, tag="", **({"type": type_} if type_ else {})) and not more
    assert len(expected(history, tag="")) == 4


async def test_type_and_tag_together_with_currency_and_dates(api, history):
    times = sorted({r["createdAt"] for r in history})
    bounds = [None, times[5], times[len(times) // 2], times[-3]]
    checked = 0
    for type_, tag, currency in itertools.product([None, "deposit", "withdraw"], [None, "promo", "credit-expired", "api-usage", "bulk"],
                                                  [None, "usd", "eur"]):
        for after, before in [(None, None), (bounds[1], None), (None, bounds[2]), (bounds[1], bounds[3])]:
            f = {k: v for k, v in {"type": type_, "tag": tag, "currency": currency, "createdAfter": after,
                                   "createdBefore": before}.items() if v is not None}
            got = [r["transactionId"] for r in await walk(api, 4, **f)]
            assert got == expected(history, **f), f
            checked += bool(got)
    assert checked > 100


async def test_paging_from_any_row_with_a_filter(api, history):
    """startingAfter may name any of the user's rows, matching the filter or not."""
    for cursor in history[::7]:
        index = history.index(cursor)
        for f in ({"tag": "promo"}, {"type": "withdraw"}, {"type": "deposit", "tag": "bulk"}, {"tag": "api-usage"}):
            page = await ok(api, "listTransactions", {"user": ALICE, "limit": 5, "startingAfter": cursor["transactionId"], **f})
            want = [r["transactionId"] for r in history[index + 1:] if matches(r, f)]
            assert [r["transactionId"] for r in page["transactions"]] == want[:5], (cursor, f)
            assert page["hasMore"] == (len(want) > 5)


def test_a_type_and_a_tag_walk_the_smaller_range():
    both = LedgerFilter(type="deposit", tag="promo")
    assert walk_for(both, (3, PROBE)) == "tags"
    assert walk_for(both, (PROBE, 3)) == "type"
    assert walk_for(both, (PROBE, PROBE)) == "tags"
    assert walk_for(LedgerFilter(tag="promo")) == "tags"
    assert walk_for(LedgerFilter(type="withdraw", tag="api-usage")) == "type"  # rows tagged only api-usage have no ledger_tags rows
    assert walk_for(LedgerFilter(tag="")) == "history"
    assert walk_for(LedgerFilter(currency="usd")) == "history"


@pytest.mark.sqlite_only("the query plans of SQLite")
def test_each_walk_is_a_range_of_its_index(db_path, server):
    """EXPLAIN QUERY PLAN: the tags walk searches ledger_tags by its key and reads ledger
    rows by seq; the type walk searches ledger_by_type, as the spend caps' period sums walk its
    withdrawals; the history walk merges the user's two ranges of ledger_by_type (there is no
    ledger_history on SQLite since migration 19), a test on its rows read from the merge as a
    co-routine, and the page's rows then read by seq in that order; none sorts."""
    import sqlite3

    from zapbilling.store.ledger_filters import page
    from zapbilling.store.sqlite.ledger import _DIALECT

    con = sqlite3.connect(db_path)
    try:
        def plan(walk: str, where: LedgerFilter) -> str:
            s = page(_DIALECT, walk, 1, ALICE, where, (5, 6), 10)
            return " | ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + s.sql, s.params))

        tags = plan("tags", LedgerFilter(tag="promo", type="deposit", currency="usd", created_from=1))
        assert "SEARCH t USING PRIMARY KEY (tenant=? AND user_id=? AND tag=? AND created_at>? AND created_at<?)" in tags or \
            "SEARCH t USING PRIMARY KEY (tenant=? AND user_id=? AND tag=?" in tags, tags
        assert "SEARCH l USING INTEGER PRIMARY KEY (rowid=?)" in tags and "TEMP B-TREE" not in tags, tags
        typed = plan("type", LedgerFilter(type="deposit", tag="api-usage"))
        assert "USING INDEX ledger_by_type (tenant=? AND user_id=? AND type=?" in typed and "TEMP B-TREE" not in typed, typed
        merged = "MERGE (UNION ALL) | LEFT | SEARCH ledger USING INDEX ledger_by_type (tenant=? AND user_id=? AND type=?"
        for where in (LedgerFilter(), LedgerFilter(created_from=1, created_before=9)):
            history = plan("history", where)
            assert history.startswith(merged) and "TEMP B-TREE" not in history, history
            assert history.count("USING INDEX ledger_by_type (tenant=? AND user_id=? AND type=?") == 2, history
        for where in (LedgerFilter(currency="usd"), LedgerFilter(tag="api-usage", created_from=1), LedgerFilter(tag="")):
            tested = plan("history", where)
            assert tested.startswith("CO-ROUTINE m") and merged in tested and "TEMP B-TREE" not in tested, tested
            assert tested.endswith("SCAN (subquery-2) | SCAN m | SEARCH l USING INTEGER PRIMARY KEY (rowid=?)"), tested
        assert con.execute("SELECT name FROM sqlite_master WHERE name = 'ledger_history'").fetchall() == []
        from zapbilling.store.sqlite.alerts import USED
        used = " | ".join(r[3] for r in con.execute("EXPLAIN QUERY PLAN " + USED, (1, ALICE, 0, 9, "usd")))
        assert used == "SEARCH ledger USING INDEX ledger_by_type (tenant=? AND user_id=? AND type=? AND created_at>? AND created_at<?)", used
    finally:
        con.close()


@pytest.mark.sqlite_only("SQLite's merged history walk")
def test_a_tested_history_page_costs_the_rows_it_passes_over_not_a_whole_type(tmp_path):
    """The history walk with a test (a currency, an unsplit tag) on a user whose rows of one type
    never match: the merge must not walk that type's whole range for each page (an arm tested
    inside would). 40,000 usd usage withdrawals and an eur deposit every 100th row: a page of
    ten eur rows passes over ~1,000 rows, and costs about what an untested page of as many rows
    does (SQLite's virtual machine steps, counted by its progress handler)."""
    import sqlite3

    from zapbilling.store.ledger_filters import page
    from zapbilling.store.migrations import migrate
    from zapbilling.store.sqlite.ledger import _DIALECT

    con = sqlite3.connect(tmp_path / "walk.db")
    try:
        migrate(con)
        con.executemany(
            "INSERT INTO ledger (seq, id, tenant, user_id, currency, type, amount, tags, notes, created_at, key_id)"
            " VALUES (?, ?, 1, 'alice', ?, ?, 1, ?, '', ?, 'k')",
            [(i, f"tx_{i}", "eur", "deposit", "", i) if i % 100 == 0 else (i, f"tx_{i}", "usd", "withdraw", "api-usage", i)
             for i in range(1, 40_001)])
        con.commit()

        def steps(where: LedgerFilter, limit: int, cursor: tuple[int, int] | None = None) -> tuple[int, list[Any]]:
            count = [0]

            def tick() -> int:
                count[0] += 1
                return 0
            con.set_progress_handler(tick, 100)
            try:
                s = page(_DIALECT, "history", 1, "alice", where, cursor, limit)
                rows = con.execute(s.sql, s.params).fetchall()
                return count[0], rows
            finally:
                con.set_progress_handler(None, 0)

        untested, rows = steps(LedgerFilter(), 1000)
        assert len(rows) == 1000 and untested > 100
        for where in (LedgerFilter(currency="eur"), LedgerFilter(tag="")):
            for cursor in (None, (30_000, 30_000)):
                tested, rows = steps(where, 10, cursor)
                top = cursor[1] if cursor else 40_001
                assert [r[-1] for r in rows] == [top - top % 100 - 100 * k if top % 100 else top - 100 * (k + 1) for k in range(10)]
                assert tested < 2 * untested, (where, cursor, tested, untested)
    finally:
        con.close()


async def test_get_usage_lists_usage_withdrawals_not_deposits_tagged_api_usage(api):
    deposit = await ok(api, "deposit", {"user": ALICE, "amount": 500, "tags": "api-usage"})
    used = await ok(api, "recordUsage", {"user": ALICE, "amount": 7, "model": "m"})
    page = await ok(api, "getUsage", {"user": ALICE})
    assert [u["transactionId"] for u in page["usage"]] == [used["transactionId"]]
    assert (page["count"], page["hasMore"]) == (1, False)
    # the deposit is no usage row to page from
    r = await api.call("getUsage", {"user": ALICE, "startingAfter": deposit["transactionId"]})
    assert r.status == 404 and r.error is not None and r.error["message"] == "transaction not found"


def _sql(db_path: str, *statements: str) -> list[Any]:
    """Run statements on the server's database (a writable connection); the last one's rows."""
    rows: list[Any] = []
    if pg.is_url(db_path):
        async def go() -> list[Any]:
            conn = await asyncpg.connect(db_path)
            try:
                out: list[Any] = []
                for s in statements:
                    out = [tuple(r) for r in await conn.fetch(s)]
                return out
            finally:
                await conn.close()
        return pg.admin().run(go())
    import sqlite3
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        for s in statements:
            rows = con.execute(s).fetchall()
    finally:
        con.close()
    return rows


def _migrate(db_path: str) -> list[int]:
    if pg.is_url(db_path):
        from zapbilling.store.postgres.connection import migrate as pg_migrate

        async def go() -> list[int]:
            conn = await asyncpg.connect(db_path)
            try:
                return await pg_migrate(conn)
            finally:
                await conn.close()
        return pg.admin().run(go())
    import sqlite3

    from zapbilling.store.migrations import migrate
    con = sqlite3.connect(db_path, isolation_level=None)
    try:
        return migrate(con)
    finally:
        con.close()


async def test_the_migration_fills_ledger_tags_from_the_rows_before_it(api, history, db_path):
    """The database as migration 7 left it (migration 8's table, trigger and index dropped, its
    version forgotten) with tagged rows; migrated again, every listing is what it was."""
    before = {t: [r["transactionId"] for r in await walk(api, 7, tag=t)] for t in TAGS}
    typed = [r["transactionId"] for r in await walk(api, 7, type="deposit", tag="bulk")]
    if BACKEND == "postgres":
        drop = ["DROP TRIGGER ledger_tags_split ON ledger", "DROP FUNCTION ledger_tags_split()"]
    else:
        drop = ["DROP TRIGGER ledger_tags_split", "DROP TRIGGER ledger_tag_one"]
    drop += ["DROP TABLE ledger_tags", "DROP INDEX ledger_by_type", "DELETE FROM schema_migrations WHERE version = 8"]
    _sql(db_path, *drop)
    assert _migrate(db_path) == [8]
    (n,) = _sql(db_path, "SELECT count(*) FROM ledger_tags")[0]
    assert n > 40
    assert {t: [r["transactionId"] for r in await walk(api, 7, tag=t)] for t in TAGS} == before
    assert [r["transactionId"] for r in await walk(api, 7, type="deposit", tag="bulk")] == typed
    # and writes after the migration are split by its trigger
    new = await ok(api, "deposit", {"user": ALICE, "amount": 1, "tags": "fresh,promo"})
    assert (await ok(api, "listTransactions", {"user": ALICE, "tag": "fresh"}))["transactions"][0]["transactionId"] == new["transactionId"]


async def test_the_checker_reports_ledger_tags_that_differ_from_the_rows(api, db_path):
    row = await ok(api, "deposit", {"user": ALICE, "amount": 5, "tags": "x,y"})
    assert find_violations(db_path) == []
    _sql(db_path, "DELETE FROM ledger_tags WHERE tag = 'y'",
         "INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq) SELECT tenant, user_id, 'z', created_at, seq FROM ledger"
         f" WHERE id = '{row['transactionId']}'")
    assert find_violations(db_path) == [
        f"ledger_tags: ledger row {row['transactionId']} (tags 'x,y') lacks its entry for tag 'y'",
        f"ledger_tags: ledger row {row['transactionId']} (tags 'x,y') has an entry for tag 'z', which it does not bear",
    ]
    _sql(db_path, "DELETE FROM ledger_tags WHERE tag = 'z'",
         "INSERT INTO ledger_tags (tenant, user_id, tag, created_at, seq) SELECT tenant, user_id, 'y', created_at, seq FROM ledger"
         f" WHERE id = '{row['transactionId']}'")
