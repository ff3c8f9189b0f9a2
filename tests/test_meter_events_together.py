"""The SQLite writer runs a commit's recordMeterEvents calls together (writer.TOGETHER,
metering._record_together): their usual events are written as one set ordered by user, where
the summary index takes them cheaply. What callers see must not change: each call's answer,
every event's seq in the callers' order (ties between equal timestamps break by it), a call
the form does not take (keyed or dimensioned events, a tenant with alerts, a missing meter)
answered exactly as alone, and a form that fails leaving its calls to run one by one."""
from __future__ import annotations

import asyncio
import sqlite3

import pytest

from zapbilling.store import Missing, Refused, SqliteStore
from zapbilling.store.base import MeterEventDraft, NewAlert, NewMeter
from zapbilling.store.sqlite import metering, writer
from zapbilling.store.sqlite.writer import TOGETHER
from zapbilling.times import SECOND, system_clock
from test_store import tenant_of

pytestmark = pytest.mark.sqlite_only("the SQLite writer's own batching")


@pytest.fixture
def store(sqlite_store):
    return sqlite_store


async def meter_of(store: SqliteStore, tenant: int, event_name: str = "tokens") -> str:
    return (await store.create_meter(tenant, NewMeter(event_name, event_name, "sum", "usd", [], system_clock())))["id"]


@pytest.fixture
def together_calls(monkeypatch) -> list[int]:
    """How many calls each run of the together form took (a spy around the real form)."""
    calls: list[int] = []
    real = TOGETHER[metering._record_events]

    def spy(conn, args):
        calls.append(len(args))
        return real(conn, args)

    monkeypatch.setitem(TOGETHER, metering._record_events, spy)
    return calls


@pytest.fixture
def reruns(monkeypatch) -> list[int]:
    """Batches the writer ran a second time, a savepoint per job (the form failed): none is
    expected of the calls below, so the form's own bookkeeping (its seqs) must hold."""
    runs: list[int] = []
    real = writer._run_guarded

    def spy(conn, jobs, notes):
        runs.append(len(jobs))
        return real(conn, jobs, notes)

    monkeypatch.setattr(writer, "_run_guarded", spy)
    return runs


def seqs(path: str, ids: list[str]) -> list[int]:
    with sqlite3.connect(path) as conn:
        by_id = dict(conn.execute(f"SELECT id, seq FROM meter_events WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall())
    return [by_id[i] for i in ids]


async def test_a_commit_s_batches_keep_the_callers_order_and_ties_break_by_it(store, together_calls, reruns):
    """Sixteen batches submitted at once form one writer batch. Each batch's users run from
    u99 down to u00, so written by user its last event goes in first: the seqs must still follow
    each batch's own order, batch after batch, and `last` over the meter (every event of a batch
    at one timestamp) must be the last event of the latest batch, not of the highest user."""
    tenant = await tenant_of(store, "acme")
    meter = await meter_of(store, tenant)
    start = system_clock()
    batches = [
        [MeterEventDraft(meter, f"u{99 - i:02d}", 1000 * k + i, start + k * SECOND) for i in range(100)]
        for k in range(16)
    ]
    answers = await asyncio.gather(*(store.record_meter_events(tenant, b, start) for b in batches))
    assert together_calls == [16] and reruns == []
    assert all(len(a) == 100 and {s for _, s in a} == {"created"} for a in answers)
    every = [seqs(store.path, [i for i, _ in a]) for a in answers]
    for batch_seqs in every:
        assert batch_seqs == list(range(batch_seqs[0], batch_seqs[0] + 100))  # the batch's order, no gap
    assert [s[0] for s in every] == sorted(s[0] for s in every)  # batch after batch, in the callers' order
    assert await store.aggregate_events(tenant, meter, "last", None, None, None) == (15 * 1000 + 99, 1600)
    assert await store.aggregate_events(tenant, meter, "last", "u99", None, None) == (15 * 1000, 16)
    assert await store.aggregate_events(tenant, meter, "sum", None, None, None) == (sum(e.value for b in batches for e in b), 1600)


async def test_calls_the_form_does_not_take_are_answered_as_alone_in_their_place(store, together_calls, reruns):
    """One writer batch: usual events; events with idempotency keys (one repeated: a duplicate
    of the first); a missing meter (refused, nothing of it written); dimensions; a tenant with a
    usage_above alert on the meter (its events are judged, the alert fires); usual again. Every
    call is answered as it would be alone, and the seqs follow the calls' order."""
    acme = await tenant_of(store, "acme")
    watched = await tenant_of(store, "watched")
    meter, other = await meter_of(store, acme), await meter_of(store, watched)
    now = system_clock()
    await store.create_alert(watched, NewAlert("usage_above", "bob", "usd", 10, "month", other, now))

    def events(m: str, n: int, **kw) -> list[MeterEventDraft]:
        return [MeterEventDraft(m, f"user{i}", 5, now, **kw) for i in range(n)]

    keyed = [MeterEventDraft(meter, "alice", 1, now, idempotency=k) for k in ("k1", "k2", "k1")]
    calls = [
        (acme, events(meter, 3)),
        (acme, keyed),
        (acme, events(meter, 2) + [MeterEventDraft("mtr_none", "alice", 1, now)]),
        (acme, events(meter, 2, dimensions={"model": "x"})),
        (watched, [MeterEventDraft(other, "bob", 7, now), MeterEventDraft(other, "bob", 8, now)]),
        (acme, events(meter, 4)),
    ]
    answers = await asyncio.gather(*(store.record_meter_events(t, e, now) for t, e in calls), return_exceptions=True)
    assert together_calls == [len(calls)] and reruns == []
    assert [s for _, s in answers[1]] == ["created", "created", "duplicate"]
    assert answers[1][2][0] == answers[1][0][0]  # the duplicate reports the first event's id
    assert isinstance(answers[2], Missing) and answers[2].index == 2
    written = [a for a in answers if not isinstance(a, BaseException)]
    order = [seqs(store.path, [i for i, s in a if s == "created"]) for a in written]
    flat = [s for o in order for s in o]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT count(*) FROM meter_events WHERE tenant = ?", (acme,)).fetchone() == (3 + 2 + 2 + 4,)
        assert conn.execute("SELECT dimensions FROM meter_events WHERE id = ?", (answers[3][0][0],)).fetchone() == ('{"model":"x"}',)
        fired = conn.execute("SELECT count(*) FROM events WHERE tenant = ? AND type = 'alert.triggered'", (watched,)).fetchone()
    assert fired == (1,)


async def test_two_writers_on_one_file_keep_every_batch_whole(tmp_path, together_calls, reruns):
    """Two stores on one file, as two `--workers` processes are: each writer's seqs come from
    the file's last seq inside its own write transaction, so batches written together by either
    never overlap and every event is there."""
    path = str(tmp_path / "store.db")
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        tenant = await tenant_of(first, "acme")
        meter = await meter_of(first, tenant)
        now = system_clock()

        def batch(k: int) -> list[MeterEventDraft]:
            return [MeterEventDraft(meter, f"u{i % 37}", k, now) for i in range(50)]

        for _ in range(5):
            answers = await asyncio.gather(*(s.record_meter_events(tenant, batch(k), now)
                                             for k in range(12) for s in (first, second)))
            for a in answers:
                got = seqs(path, [i for i, _ in a])
                assert got == list(range(got[0], got[0] + 50))
        assert sum(together_calls) == 5 * 24 and reruns == []
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT id) FROM meter_events").fetchone() == (5 * 24 * 50,) * 2
    finally:
        await first.close()
        await second.close()


async def test_a_form_that_fails_leaves_its_calls_to_run_one_by_one(store, monkeypatch):
    """Should the together form raise (here after writing), the batch is rolled back and runs
    again with a savepoint per job, each call by itself: the refused one writes nothing and the
    others commit once."""
    writer = store._writer
    await writer.run(lambda conn: conn.execute("CREATE TABLE scratch (job TEXT)"))
    alone: list[str] = []

    def write(conn: sqlite3.Connection, name: str) -> str:
        alone.append(name)
        conn.execute("INSERT INTO scratch VALUES (?)", (name,))
        if name == "bad":
            raise Refused("bad refused after writing")
        return name

    def together(conn: sqlite3.Connection, args: list[tuple[str]]) -> list[tuple[bool, object]]:
        conn.executemany("INSERT INTO scratch VALUES (?)", args)
        raise sqlite3.IntegrityError("the set failed after writing")

    monkeypatch.setitem(TOGETHER, write, together)
    results = await asyncio.gather(*(writer.run(write, n) for n in ("a", "bad", "c")), return_exceptions=True)
    assert results[0] == "a" and isinstance(results[1], Refused) and results[2] == "c"
    assert alone == ["a", "bad", "c"]
    with sqlite3.connect(store.path) as conn:
        assert sorted(r for r, in conn.execute("SELECT job FROM scratch")) == ["a", "c"]
