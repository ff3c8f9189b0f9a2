"""The SQLite store on its own: WAL mode, versioned idempotent migrations, running balances kept
equal to the ledger, and the writer's batches (one SAVEPOINT per job, one COMMIT per batch)."""
from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from zapbilling.billing.ledger import LOTS, is_charge
from zapbilling.store import Missing, NewEntry, NotRefundable, OutOfRange, Refused, RefundLeft, SqliteStore
from zapbilling.store.migrations import migrate, scripts
from zapbilling.times import DAY, SECOND, system_clock

pytestmark = pytest.mark.sqlite_only("the SQLite store's own modules")

INT64_MAX = 2**63 - 1
ALL_VERSIONS = [v for v, _, _ in scripts()]


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
async def store(path):
    s = SqliteStore(path)
    await s.open()
    yield s
    await s.close()


async def tenant_of(store: SqliteStore, org: str = "acme", mode: str = "test") -> int:
    _, secret = await store.create_key(org, mode, "admin", system_clock())
    principal = await store.authenticate(secret)
    assert principal is not None
    return principal.tenant


def deposit(user: str, amount: int, *, currency: str = "usd", now: int | None = None, **kw) -> NewEntry:
    return NewEntry(type="deposit", user=user, currency=currency, amount=amount, now=now or system_clock(), key_id="key_test", lots=LOTS, **kw)


def withdraw(user: str, amount: int, *, currency: str = "usd", now: int | None = None, **kw) -> NewEntry:
    return NewEntry(type="withdraw", user=user, currency=currency, amount=amount, now=now or system_clock(), key_id="key_test", lots=LOTS,
                    tags=kw.pop("tags", "api-usage"), **kw)


def refund(user: str, amount: int, original: str, *, currency: str = "usd", now: int | None = None) -> NewEntry:
    return NewEntry(type="deposit", user=user, currency=currency, amount=amount, now=now or system_clock(), key_id="key_test", lots=LOTS,
                    tags="refund", refund_of=original)


def append(store: SqliteStore, tenant: int, entry: NewEntry):
    """A ledger write as the handlers make it: a refund may name only what the domain's rule
    (billing.ledger.is_charge) calls refundable."""
    return store.append_ledger_row(tenant, entry, None, is_charge)


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def ledger_sums(path: str) -> dict[tuple[int, str, str], int]:
    with connect(path) as conn:
        rows = conn.execute(
            "SELECT tenant, user_id, currency,"
            " SUM(CASE type WHEN 'deposit' THEN amount WHEN 'withdraw' THEN -amount END)"
            " FROM ledger GROUP BY tenant, user_id, currency"
        ).fetchall()
    return {(t, u, c): s for t, u, c, s in rows}


def balance_rows(path: str) -> dict[tuple[int, str, str], int]:
    with connect(path) as conn:
        rows = conn.execute("SELECT tenant, user_id, currency, balance FROM balances").fetchall()
    return {(t, u, c): b for t, u, c, b in rows}


def ledger_ids(path: str) -> set[str]:
    with connect(path) as conn:
        return {i for (i,) in conn.execute("SELECT id FROM ledger")}


def ledger_count(path: str) -> int:
    with connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]


def assert_balances_match_ledger(path: str) -> None:
    sums, balances = ledger_sums(path), balance_rows(path)
    for account, total in sums.items():
        assert balances.get(account, 0) == total, f"{account}: balances table {balances.get(account)} != ledger {total}"
    for account, value in balances.items():
        assert sums.get(account, 0) == value, f"{account}: balances table {value} but ledger {sums.get(account, 0)}"


def record_batches(store: SqliteStore) -> list[int]:
    """Wrap the writer's batch runner to record how many jobs each batch held."""
    writer = store._writer
    sizes: list[int] = []
    original = writer._run_batch

    def run_batch(jobs):
        sizes.append(len(jobs))
        return original(jobs)

    writer._run_batch = run_batch  # type: ignore[method-assign]
    return sizes


# -- WAL and migrations --------------------------------------------------------------------

async def test_database_is_in_wal_mode(store, path):
    with connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    assert (await store._read("PRAGMA journal_mode"))[0][0].lower() == "wal"


async def test_the_writer_keeps_its_savepoint_journals_in_memory(store):
    """A batch run again after a failed write has a SAVEPOINT per write, and SQLite copies
    every page a savepoint changes that an earlier write of the batch had already changed into
    a sub-journal, which spills to a temporary file past 64 KiB unless temp_store is MEMORY.
    Spilled, when every write had a savepoint, a batch of recordUsage writes with an endpoint
    on usage.recorded wrote ~65 KB per request to files under /var/tmp (strace), and its
    system CPU per request went 65 -> 90 us."""
    writer = store._writer
    assert writer._conn is not None
    assert await asyncio.get_running_loop().run_in_executor(
        writer._pool, lambda: writer._conn.execute("PRAGMA temp_store").fetchone()[0]) == 2  # MEMORY


async def test_opening_twice_applies_no_migration_the_second_time(path):
    first = SqliteStore(path)
    await first.open()
    await first.close()
    with connect(path) as conn:
        before = conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()
        schema_before = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert [v for v, _, _ in before] == ALL_VERSIONS
    second = SqliteStore(path)
    await second.open()
    await second.close()
    with connect(path) as conn:
        after = conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()
        schema_after = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    assert after == before
    assert schema_after == schema_before


async def test_schema_migrations_holds_each_version_once(path):
    for _ in range(3):
        s = SqliteStore(path)
        await s.open()
        await s.close()
    with connect(path) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == ALL_VERSIONS
    assert len(versions) == len(set(versions))


def test_migrate_returns_empty_list_on_an_up_to_date_db(path):
    conn = connect(path)
    try:
        assert migrate(conn) == ALL_VERSIONS
        assert migrate(conn) == []
        assert migrate(conn) == []
    finally:
        conn.close()
    conn = connect(path)
    try:
        assert migrate(conn) == []
    finally:
        conn.close()


async def test_migrate_returns_empty_list_after_store_open(store, path):
    conn = connect(path)
    try:
        assert migrate(conn) == []
    finally:
        conn.close()


async def test_two_stores_opening_a_fresh_file_at_once_both_succeed(tmp_path):
    """Repeated on several fresh files, since the race is a matter of timing."""
    for trial in range(250):
        path = str(tmp_path / f"fresh-{trial}.db")
        stores = [SqliteStore(path), SqliteStore(path)]
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        try:
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"trial {trial}: opening a fresh file from two stores at once failed: {errors!r}"
            for i, s in enumerate(stores):
                await s.create_key(f"org{i}", "test", "admin", system_clock())
            with connect(path) as conn:
                versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
            assert versions == ALL_VERSIONS
        finally:
            for s, r in zip(stores, results):
                if not isinstance(r, BaseException):
                    await s.close()


_OPENER = r"""
import asyncio, os, sys, time
from zapbilling.store import SqliteStore
from zapbilling.times import system_clock
folder, me, peers, trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
async def main():
    errors = []
    for k in range(trials):
        # a barrier through files: every process opens fresh file k at the same moment
        open(os.path.join(folder, f"ready-{k}-{me}"), "w").close()
        deadline = time.monotonic() + 30
        while not all(os.path.exists(os.path.join(folder, f"ready-{k}-{p}")) for p in range(peers)):
            if time.monotonic() > deadline:
                sys.exit(f"trial {k}: the other process never arrived")
        store = SqliteStore(os.path.join(folder, f"fresh-{k}.db"))
        try:
            await store.open()
        except Exception as exc:
            errors.append(f"trial {k}: {exc!r}")
            continue
        try:
            await store.create_key(f"org{me}", "test", "admin", system_clock())
        finally:
            await store.close()
    if errors:
        sys.exit("; ".join(errors))
asyncio.run(main())
"""


def test_two_processes_opening_a_fresh_file_at_once_both_succeed(tmp_path):
    """Two processes open the same fresh file at the same moment, on many fresh files in turn
    (the race is a matter of timing)."""
    trials, peers = 200, 2
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPENER, str(tmp_path), str(i), str(peers), str(trials)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for i in range(peers)
    ]
    try:
        failures = []
        for p in procs:
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                failures.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
        assert not failures, f"opening a fresh file from two processes at once failed: {failures}"
        for k in range(trials):
            with connect(str(tmp_path / f"fresh-{k}.db")) as conn:
                versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
                keys = conn.execute("SELECT COUNT(*) FROM api_keys").fetchone()[0]
            assert versions == ALL_VERSIONS
            assert keys == peers
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# -- balances and the ledger ---------------------------------------------------------------

async def test_balances_table_equals_ledger_sum_after_mixed_writes_with_failures(store, path):
    acme = await tenant_of(store, "acme", "test")
    acme_live = await tenant_of(store, "acme", "live")
    globex = await tenant_of(store, "globex", "test")
    now = system_clock()
    failures = 0

    async def must_fail(tenant: int, entry: NewEntry, refusal: Refused) -> None:
        """The write raises `refusal` (the same exception type with the same facts)."""
        nonlocal failures
        with pytest.raises(type(refusal)) as raised:
            await append(store, tenant, entry)
        assert vars(raised.value) == vars(refusal), (raised.value, refusal)
        failures += 1

    d1 = await append(store, acme, deposit("alice", 1000, now=now))
    await append(store, acme, deposit("alice", 300, currency="eur", now=now))
    await append(store, acme_live, deposit("alice", 50, now=now))
    w1 = await append(store, acme, withdraw("alice", 1200, now=now))  # goes negative
    c1 = await append(store, acme, withdraw("alice", 1000, now=now))
    r1 = await append(store, acme, refund("alice", 400, c1["id"], now=now))
    await must_fail(acme, refund("alice", 601, c1["id"], now=now), RefundLeft(600, 1000))  # 400 of 1000 already refunded
    await must_fail(acme, refund("alice", 10, c1["id"], currency="eur", now=now), Missing("ledger row"))  # other currency
    await must_fail(acme_live, refund("alice", 10, c1["id"], now=now), Missing("ledger row"))  # other tenant
    await must_fail(acme, refund("bob", 10, c1["id"], now=now), Missing("ledger row"))  # other user
    await must_fail(acme, refund("alice", 10, "tx_nosuchtransaction", now=now), Missing("ledger row"))
    await must_fail(acme, refund("alice", 10, d1["id"], now=now), NotRefundable("deposit", ""))  # only a charge
    await must_fail(acme, refund("alice", 10, r1["id"], now=now), NotRefundable("deposit", "refund"))
    await append(store, acme, refund("alice", 1200, w1["id"], now=now))
    await must_fail(acme, refund("alice", 1, w1["id"], now=now), RefundLeft(0, 1200))
    # expiring money: partly spent, then expired and forfeited (by a later write and by the sweep)
    await store.append_ledger_row(acme, deposit("bob", 500, now=now, expires_at=now + 10 * SECOND))
    await store.append_ledger_row(acme, deposit("bob", 200, now=now))
    await store.append_ledger_row(acme, withdraw("bob", 120, now=now + SECOND))
    await store.append_ledger_row(acme, withdraw("bob", 30, now=now + 20 * SECOND))  # forfeits bob's 380 first
    await store.append_ledger_row(globex, deposit("carol", 700, now=now, expires_at=now + DAY))
    await store.append_ledger_row(globex, deposit("dave", 90, currency="jpy", now=now, expires_at=now + DAY))
    assert await store.forfeit_expired(now + 2 * DAY, LOTS) >= 2
    # writes that fail after inserting their ledger row: the balance would leave int64
    await store.append_ledger_row(globex, deposit("whale", INT64_MAX - 5, now=now))
    await must_fail(globex, deposit("whale", 6, now=now), OutOfRange("balance"))
    await must_fail(globex, deposit("whale", INT64_MAX, now=now), OutOfRange("balance"))
    await store.append_ledger_row(globex, deposit("whale", 5, now=now))
    await store.append_ledger_row(globex, withdraw("whale", 10, now=now))
    # a dedupe repeat adds nothing
    u1 = await store.append_ledger_row(globex, withdraw("erin", 40, now=now, dedupe_key="usage:r1"))
    u2 = await store.append_ledger_row(globex, withdraw("erin", 999, now=now, dedupe_key="usage:r1"))
    assert u2["id"] == u1["id"]
    assert failures == 10

    assert_balances_match_ledger(path)
    expected = {
        (acme, "alice", "usd"): 1000 - 1200 - 1000 + 400 + 1200,
        (acme, "alice", "eur"): 300,
        (acme_live, "alice", "usd"): 50,
        (acme, "bob", "usd"): 500 + 200 - 120 - 380 - 30,
        (globex, "carol", "usd"): 0,
        (globex, "dave", "jpy"): 0,
        (globex, "whale", "usd"): INT64_MAX - 10,
        (globex, "erin", "usd"): -40,
    }
    assert balance_rows(path) == expected
    for (tenant, user, currency), value in expected.items():
        assert (await store.balance(tenant, user, currency, now + 3 * DAY))[0] == value


async def test_balance_read_uses_the_running_balance_not_the_ledger(store, path):
    tenant = await tenant_of(store)
    now = system_clock()
    await store.append_ledger_row(tenant, deposit("alice", 1000, now=now))
    await store.append_ledger_row(tenant, withdraw("alice", 250, now=now))
    assert await store.balance(tenant, "alice", "usd", now) == (750, 0)
    # Change the stored running balance behind the store's back: a read that summed the ledger
    # would still say 750.
    with connect(path) as conn:
        conn.execute("UPDATE balances SET balance = 12345 WHERE tenant = ? AND user_id = 'alice'", (tenant,))
    await asyncio.sleep(0)  # point reads of one loop turn share a snapshot; this one is over
    assert await store.balance(tenant, "alice", "usd", now) == (12345, 0)
    assert await store.balances(tenant, "alice", now) == [("usd", 12345, 0)]


async def test_one_write_forfeits_and_spends_lots_beyond_the_first_page(store, path):
    """A write settles the account's lots in pages of LOT_PAGE; expired lots sort first. With
    more expired lots than a page, and more expiring lots to spend than the next, every expired
    lot is still forfeited (its remainder only) and the usage is taken earliest expiry first."""
    from zapbilling.store.sqlite.ledger import LOT_PAGE

    tenant = await tenant_of(store)
    now = system_clock()
    n = LOT_PAGE + 6
    for i in range(n):  # expire at now + 1..n seconds; the first one is partly spent below
        await store.append_ledger_row(tenant, deposit("amy", 10, now=now, expires_at=now + (i + 1) * SECOND))
    for i in range(n):  # expire in a day and later, 3 cents each
        await store.append_ledger_row(tenant, deposit("amy", 3, now=now, expires_at=now + DAY + i * SECOND))
    await store.append_ledger_row(tenant, deposit("amy", 1000, now=now))  # never expires
    await store.append_ledger_row(tenant, withdraw("amy", 4, now=now))  # from the earliest lot: 6 of 10 left
    later = now + (n + 1) * SECOND  # every 10-cent lot has expired, no 3-cent lot has
    spend = 3 * (LOT_PAGE + 2) + 1  # all of LOT_PAGE + 2 lots, and 1 cent of the next
    await store.append_ledger_row(tenant, withdraw("amy", spend, now=later))

    with connect(path) as conn:
        expired = conn.execute(
            "SELECT amount FROM ledger WHERE tenant = ? AND tags = 'credit-expired' ORDER BY seq", (tenant,)
        ).fetchall()
        lots = [r for r, in conn.execute(
            "SELECT remaining FROM ledger WHERE tenant = ? AND expires_at IS NOT NULL ORDER BY expires_at, seq", (tenant,)
        )]
    assert [a for a, in expired] == [6] + [10] * (n - 1)
    assert lots[:n] == [0] * n
    assert lots[n:] == [0] * (LOT_PAGE + 2) + [2] + [3] * (n - LOT_PAGE - 3)
    total = 10 * n + 3 * n + 1000 - 4 - (6 + 10 * (n - 1)) - spend
    assert balance_rows(path)[(tenant, "amy", "usd")] == total
    assert_balances_match_ledger(path)


async def test_failing_refund_leaves_no_ledger_row_and_no_balance_change(store, path):
    tenant = await tenant_of(store)
    now = system_clock()
    dep = await append(store, tenant, deposit("alice", 100, now=now))
    original = await append(store, tenant, withdraw("alice", 100, now=now))  # a charge
    count, balance = ledger_count(path), await store.balance(tenant, "alice", "usd", now)
    with pytest.raises(RefundLeft) as left:
        await append(store, tenant, refund("alice", 150, original["id"], now=now))
    assert (left.value.left, left.value.amount) == (100, 100)
    with pytest.raises(Missing) as missing:
        await append(store, tenant, refund("alice", 10, "tx_missing", now=now))
    assert missing.value.entity == "ledger row"
    with pytest.raises(NotRefundable) as not_a_charge:
        await append(store, tenant, refund("alice", 10, dep["id"], now=now))
    assert (not_a_charge.value.type, not_a_charge.value.tags) == ("deposit", "")
    assert ledger_count(path) == count
    assert await store.balance(tenant, "alice", "usd", now) == balance
    assert_balances_match_ledger(path)
    # the failed refunds claimed nothing of the original: all of it can still be refunded
    r = await append(store, tenant, refund("alice", 100, original["id"], now=now))
    assert r["refundOf"] == original["id"]
    assert (r["keyId"], r["holdId"]) == ("key_test", None)
    assert await store.balance(tenant, "alice", "usd", now) == (100, 0)
    # and a refund is no charge: it cannot be refunded in turn
    with pytest.raises(NotRefundable):
        await append(store, tenant, refund("alice", 1, r["id"], now=now))
    assert await store.balance(tenant, "alice", "usd", now) == (100, 0)


async def test_write_failing_after_its_insert_leaves_no_ledger_row_and_no_balance_change(store, path):
    tenant = await tenant_of(store)
    now = system_clock()
    await store.append_ledger_row(tenant, deposit("whale", INT64_MAX - 1, now=now))
    count, ids = ledger_count(path), ledger_ids(path)
    with pytest.raises(OutOfRange) as raised:
        await store.append_ledger_row(tenant, deposit("whale", 2, now=now))
    assert raised.value.total == "balance"
    assert ledger_count(path) == count and ledger_ids(path) == ids
    assert await store.balance(tenant, "whale", "usd", now) == (INT64_MAX - 1, 0)
    assert_balances_match_ledger(path)


# -- the writer: batches, savepoints, concurrency, close -----------------------------------

async def test_failing_job_in_a_batch_rolls_back_only_its_own_writes(store, path):
    tenant = await tenant_of(store)
    now = system_clock()
    deposits = [await append(store, tenant, deposit(f"u{i}", 100, now=now)) for i in range(20)]
    originals = [await append(store, tenant, withdraw(f"u{i}", 100, now=now)) for i in range(20)]  # charges
    await store.append_ledger_row(tenant, deposit("whale", INT64_MAX - 5, now=now))
    count_before = ledger_count(path)
    sizes = record_batches(store)

    entries: list[tuple[NewEntry, bool]] = []  # (entry, should succeed)
    for i, o in enumerate(originals):
        user = f"u{i}"
        entries.append((refund(user, 60, o["id"], now=now), True))
        entries.append((refund(user, 60, o["id"], now=now), False))  # together 120 > 100
        entries.append((refund(user, 101, o["id"], now=now), False))
        entries.append((refund(user, 1, deposits[i]["id"], now=now), False))  # not a charge
        entries.append((deposit(user, 7, now=now), True))
        entries.append((withdraw(user, 3, now=now), True))
    entries.append((deposit("whale", 6, now=now), False))  # inserts its row, then overflows
    entries.append((deposit("whale", 5, now=now), True))
    entries.append((deposit("whale", 1, now=now), False))

    results = await asyncio.gather(*(append(store, tenant, e) for e, _ in entries), return_exceptions=True)

    assert len(entries) <= 256 and sizes == [len(entries)], f"expected one batch of {len(entries)}, got {sizes}"
    for (entry, ok), result in zip(entries, results):
        if ok:
            assert isinstance(result, dict), f"{entry} should have committed, got {result!r}"
        else:
            assert isinstance(result, (RefundLeft, NotRefundable, OutOfRange)), f"{entry} should have failed, got {result!r}"
    committed = [r for r in results if isinstance(r, dict)]
    assert ledger_count(path) == count_before + len(committed)
    assert {r["id"] for r in committed} <= ledger_ids(path)
    for i in range(len(originals)):
        assert await store.balance(tenant, f"u{i}", "usd", now) == (100 - 100 + 60 + 7 - 3, 0)
    assert await store.balance(tenant, "whale", "usd", now) == (INT64_MAX, 0)
    assert_balances_match_ledger(path)


async def test_a_batch_runs_its_jobs_once_unless_one_fails_after_a_write(store, path):
    """The writer runs a batch's jobs with no savepoint each (see writer._run_unguarded); only a
    job that fails after changing a row makes it roll the batch back and run it again with a
    savepoint per job. Either way every other job commits once and the failed one writes nothing."""
    writer = store._writer
    await writer.run(lambda conn: conn.execute("CREATE TABLE scratch (job TEXT)"))
    runs: dict[str, int] = {}

    def write(conn: sqlite3.Connection, name: str, fail: str | None = None) -> str:
        runs[name] = runs.get(name, 0) + 1
        if fail == "before":
            raise Refused(f"{name} refused before writing")
        conn.execute("INSERT INTO scratch VALUES (?)", (name,))
        if fail == "after":
            raise Refused(f"{name} refused after writing")
        return name

    async def batch(*jobs: tuple[str, str | None]) -> list[object]:
        sizes = record_batches(store)
        results = await asyncio.gather(*(writer.run(write, name, fail) for name, fail in jobs), return_exceptions=True)
        assert sizes == [len(jobs)]
        return results

    results = await batch(("a", None), ("b", "before"), ("c", None))
    assert results[0] == "a" and isinstance(results[1], Refused) and results[2] == "c"
    assert runs == {"a": 1, "b": 1, "c": 1}  # a refusal that wrote nothing: one run

    runs.clear()
    results = await batch(("d", None), ("e", "after"), ("f", None))
    assert results[0] == "d" and isinstance(results[1], Refused) and results[2] == "f"
    assert runs == {"d": 2, "e": 2, "f": 1}  # stopped at e, rolled back, run again with savepoints
    with sqlite3.connect(path) as conn:
        assert sorted(r for r, in conn.execute("SELECT job FROM scratch")) == ["a", "c", "d", "f"]


async def test_concurrent_writes_are_all_committed_and_each_caller_gets_its_own_row(store, path):
    tenant = await tenant_of(store)
    now = system_clock()
    n = 600  # more than one batch

    async def one(i: int):
        user = f"user{i % 7}"
        entry = deposit(user, i + 1, now=now, metadata={"caller": i}, notes=f"caller {i}")
        return i, user, await store.append_ledger_row(tenant, entry)

    results = await asyncio.gather(*(one(i) for i in range(n)))
    ids = [row["id"] for _, _, row in results]
    assert len(set(ids)) == n
    for i, user, row in results:
        assert row["metadata"] == {"caller": i} and row["notes"] == f"caller {i}"
        assert (row["user"], row["amount"]) == (user, i + 1)
    assert set(ids) <= ledger_ids(path)
    for u in range(7):
        expected = sum(i + 1 for i in range(n) if i % 7 == u)
        assert await store.balance(tenant, f"user{u}", "usd", now) == (expected, 0)
    assert_balances_match_ledger(path)


async def test_close_finishes_writes_already_submitted(path):
    store = SqliteStore(path)
    await store.open()
    tenant = await tenant_of(store)
    now = system_clock()
    tasks = [asyncio.create_task(store.append_ledger_row(tenant, deposit("alice", i + 1, now=now))) for i in range(400)]
    await asyncio.sleep(0)  # every task has submitted its job and waits for its commit
    await store.close()
    assert all(t.done() for t in tasks), "close() returned before the submitted writes were answered"
    rows = [t.result() for t in tasks]
    assert len({r["id"] for r in rows}) == 400
    reopened = SqliteStore(path)
    await reopened.open()
    try:
        assert {r["id"] for r in rows} <= ledger_ids(path)
        assert await reopened.balance(tenant, "alice", "usd", now) == (sum(range(1, 401)), 0)
    finally:
        await reopened.close()


async def test_usage_page_lists_usage_newest_first_and_pages(store):
    tenant = await tenant_of(store)
    now = system_clock()
    await store.append_ledger_row(tenant, deposit("alice", 1000, now=now))
    usage = [await store.append_ledger_row(tenant, withdraw("alice", i + 1, now=now + i)) for i in range(5)]
    await store.append_ledger_row(tenant, withdraw("alice", 9, now=now, tags="other"))
    page, more = await store.usage_page(tenant, "alice", None, 3, None)
    assert [r["id"] for r in page] == [u["id"] for u in reversed(usage)][:3] and more
    page2, more2 = await store.usage_page(tenant, "alice", None, 3, page[-1]["id"])
    assert [r["id"] for r in page2] == [u["id"] for u in reversed(usage)][3:] and not more2


def test_ids_made_later_sort_later_and_stay_distinct():
    """Time-ordered ids keep the `id` indexes growing at their right edge (see new_id)."""
    import re

    from zapbilling.store.ids import new_id

    first = [new_id("tx") for _ in range(2000)]
    time.sleep(0.002)
    second = new_id("tx")
    assert all(re.fullmatch(r"tx_[0-9a-f]{24}", i) for i in first)
    assert len(set(first)) == len(first)
    assert max(first) < second


def test_ids_made_by_two_threads_at_once_and_by_a_forked_child_stay_distinct():
    """new_id takes its random parts from a pool shared by the loop's thread and the writer's
    (store/ids.py): two threads drawing from it at once never get the same part, and a forked
    child does not draw the parts its parent will (the pool is emptied in the child)."""
    import threading

    from zapbilling.store import ids

    made: list[list[str]] = [[], []]

    def make(out: list[str]) -> None:
        for _ in range(20_000):
            out.append(ids.new_id("tx")[-13:])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads take turns as often as Python lets them
    try:
        threads = [threading.Thread(target=make, args=(out,)) for out in made]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    parts = made[0] + made[1]
    assert len(set(parts)) == len(parts) == 40_000

    ids.new_id("tx")  # the pool holds parts now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id's random part, then out without pytest's teardown
        os.write(w, ids.new_id("tx")[-13:].encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    child = os.read(r, 64).decode()
    os.close(r)
    assert len(child) == 13 and child != ids.new_id("tx")[-13:]
