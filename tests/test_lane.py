"""The lane (transport/lane.py): long work's steps take one turn at a time, round the orgs, and
pause for short calls in hand; and a large batch answer joined a MiB per loop turn
(transport/answers.py). Plain asyncio with a clock the tests move: the pauses are checked by the
timer the lane sets, never by waiting to see how long something took."""
from __future__ import annotations

import asyncio
import json

import msgpack
import pytest

from zapbilling.loop_turn import LONG_WORK, away, converted, give_way
from zapbilling.transport.answers import JOIN_STEP, _joined_in_turns
from zapbilling.transport.codec import CODECS, JSON
from zapbilling.transport.lane import MAX_PAUSE, MIN_PAUSE, RECENT, Lane


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lane_with(short_calls: int = 0) -> tuple[Lane, Clock]:
    """A lane whose requests in hand are its own long work plus `short_calls` (a list, so a test
    may change it)."""
    clock = Clock()
    shorts = [short_calls]
    lane = Lane(lambda: lane.members + shorts[0], clock)
    lane.shorts = shorts  # type: ignore[attr-defined]
    return lane, clock


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_org_with_many_steps_queued_takes_turns_with_another_not_before_it():
    lane, _ = lane_with()
    order: list[str] = []
    a = lane.steps("org-a")
    await a.next()  # org A's first step holds the turn

    async def step(owner: str, name: str) -> None:
        s = lane.steps(owner)
        try:
            await s.next()
            order.append(name)
            await turns(2)
        finally:
            s.close()

    tasks = [asyncio.create_task(step("org-a", f"a{i}")) for i in range(2, 5)]
    await turns()
    tasks.append(asyncio.create_task(step("org-b", "b1")))
    tasks.append(asyncio.create_task(step("org-b", "b2")))
    await turns()
    assert order == []  # nothing runs beside the step holding the turn
    a.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    # A's queue came first, then B's; each org's turn goes to the back of the round once served
    assert order == ["a2", "b1", "a3", "b2", "a4"]
    assert lane.members == 0 and not lane.held and not lane.waiting


async def test_with_no_short_call_in_hand_the_next_turn_is_given_at_once():
    lane, clock = lane_with(short_calls=0)
    first, second = lane.steps("org-a"), lane.steps("org-b")
    await first.next()
    waiting = asyncio.create_task(second.next())
    await turns()
    clock.now += 1.0  # a long step
    first.close()
    assert lane._timer is None
    await asyncio.wait_for(waiting, 5)
    assert second.holding
    second.close()


async def test_while_short_calls_are_in_hand_the_next_step_waits_a_pause_as_long_as_the_last():
    lane, clock = lane_with(short_calls=1)
    first, second = lane.steps("org-a"), lane.steps("org-a")
    await first.next()
    waiting = asyncio.create_task(second.next())
    await turns()
    clock.now += 0.005
    first.close()
    timer = lane._timer
    assert timer is not None and not waiting.done()
    assert timer.when() - asyncio.get_running_loop().time() == pytest.approx(0.005, abs=0.002)
    await asyncio.wait_for(waiting, 5)  # given when the timer fires
    # a step longer than MAX_PAUSE pauses MAX_PAUSE, not as long as it took
    third = lane.steps("org-a")
    waiting = asyncio.create_task(third.next())
    await turns()
    clock.now += 5.0
    second.close()
    timer = lane._timer
    assert timer is not None and timer.when() - asyncio.get_running_loop().time() == pytest.approx(MAX_PAUSE, abs=0.005)
    await asyncio.wait_for(waiting, 5)
    third.close()


async def test_short_steps_add_up_to_a_pause_and_the_same_request_waits_it_too():
    """A batch's getBalance entries take ~50 us each: a pause after each would cost a timer's
    millisecond; they pause once they have run MIN_PAUSE between them. One request alone in the
    lane waits out the pause as well (it is the short calls that are waited for)."""
    lane, clock = lane_with(short_calls=1)
    steps = lane.steps("org-a")
    step = MIN_PAUSE * 0.3
    for _ in range(3):
        await steps.next()
        clock.now += step
    steps.done()
    assert lane.free_at == 0.0  # 0.9 of MIN_PAUSE: no pause yet
    await steps.next()
    clock.now += step
    waiting = asyncio.create_task(steps.next())
    await turns()
    assert lane.free_at == pytest.approx(clock.now + 4 * step)  # the four steps, paused for at once
    assert lane._timer is not None and not waiting.done()
    await asyncio.wait_for(waiting, 5)
    steps.close()


async def test_short_calls_seen_a_moment_ago_still_count_and_stop_counting_after_RECENT():
    lane, clock = lane_with(short_calls=1)
    steps = lane.steps("org-a")
    await steps.next()
    clock.now += 0.0001
    steps.done()  # a short call seen in hand here
    lane.shorts[0] = 0  # type: ignore[attr-defined]
    await steps.next()
    clock.now += 0.002
    steps.done()
    assert lane.free_at == pytest.approx(clock.now + 0.0021)  # still counted: both steps paused for
    clock.now += RECENT
    await steps.next()
    clock.now += 0.002
    steps.done()
    assert lane.free_at == 0.0 and lane.owed == 0.0
    steps.close()


async def test_a_cancelled_step_leaves_the_others_their_turns():
    lane, _ = lane_with()
    holder, gone, after = lane.steps("org-a"), lane.steps("org-b"), lane.steps("org-c")
    await holder.next()
    cancelled = asyncio.create_task(gone.next())
    waiting = asyncio.create_task(after.next())
    await turns()
    cancelled.cancel()
    await turns()
    holder.close()
    await asyncio.wait_for(waiting, 5)
    assert cancelled.cancelled() and after.holding
    # handed the turn and cancelled before it ran: the turn goes on
    handed = lane.steps("org-b")
    racing = asyncio.create_task(handed.next())
    last = lane.steps("org-c")
    last_waiting = asyncio.create_task(last.next())
    await turns()
    after.close()  # hands the turn to `handed`...
    racing.cancel()  # ...which is cancelled before it runs
    await asyncio.wait_for(last_waiting, 5)
    assert last.holding and not handed.holding
    for s in (gone, handed, last):
        s.close()
    assert lane.members == 0 and not lane.held


@pytest.mark.parametrize("codec", [JSON, CODECS["application/msgpack"]], ids=["json", "msgpack"])
async def test_a_large_batch_answer_joined_in_turns_is_the_same_bytes(codec):
    entry = {"id": 1, "result": {"data": ["x" * 1000] * 300}}
    pieces = [codec.encode(dict(entry, id=i)) for i in range(20)]  # ~6 MB
    assert sum(map(len, pieces)) > 4 * JOIN_STEP
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    joined = await _joined_in_turns(codec, pieces)
    done = True
    await t
    joined_bytes = joined.getvalue()
    assert joined_bytes == codec.encode_array(pieces)
    assert ticks >= 4  # the loop ran other work between the MiBs
    decoded = msgpack.unpackb(joined_bytes) if codec is not JSON else json.loads(joined_bytes)
    assert [d["id"] for d in decoded] == list(range(20))
    one = [codec.encode(entry)]
    assert (await _joined_in_turns(codec, one)).getvalue() == codec.encode_array(one)


async def test_rows_are_converted_in_pieces_only_inside_long_work():
    rows = list(range(1000))
    steps: list[int] = []

    class Recorder:
        holding = True

        async def next(self) -> None:
            steps.append(len(steps))

        def done(self) -> None:
            pass

    step = Recorder()

    assert await converted(rows, lambda r: r * 2, 256) == [r * 2 for r in rows]
    assert steps == []  # a single call's rows: one piece, no wait
    token = LONG_WORK.set(step)
    try:
        assert await converted(rows, lambda r: r * 2, 256) == [r * 2 for r in rows]
        assert len(steps) == 3  # 4 pieces of at most 256: a turn between each two
        steps.clear()
        assert await converted(rows[:256], str, 256) == [str(r) for r in rows[:256]]
        assert steps == []
        await give_way()
        assert steps == [0]
    finally:
        LONG_WORK.reset(token)
    await give_way()  # outside long work: nothing
    assert steps == [0]


async def test_a_batch_runs_its_reads_as_steps_of_long_work_and_its_writes_as_short_calls():
    """The reads of a batch run one at a time, each in its turn and able to give way inside;
    the writes start together, outside the lane (a batch of writes stays one group commit)."""
    from zapbilling.registry import load_registry
    from zapbilling.transport.answers import answer_batch

    commands = load_registry().commands
    lane, _ = lane_with()
    seen: list[tuple[str, bool, bool]] = []

    async def run(entry: dict, refusal: object) -> tuple[dict, int]:
        in_long_work = LONG_WORK.get() is not None
        seen.append((entry["method"], in_long_work, steps.holding if in_long_work else False))
        await asyncio.sleep(0)
        return {"id": entry["id"], "result": {}}, 200

    entries = [{"method": m, "id": i} for i, m in enumerate(
        ["billing.getBalance", "billing.deposit", "billing.listTransactions", "billing.recordUsage"])]
    steps = lane.steps("org-a")
    try:
        await answer_batch(entries, run, commands, JSON, 1 << 20, steps)
    finally:
        steps.close()
    assert sorted(seen) == sorted([("billing.getBalance", True, True), ("billing.deposit", False, False),
                                   ("billing.listTransactions", True, True), ("billing.recordUsage", False, False)])
    assert not lane.held and lane.members == 0


async def test_long_work_gives_its_turn_back_while_it_waits_on_the_database():
    """`away()`: an org's step waiting on a long query holds up no other org's steps; the turn
    is taken again after (not after an error); an `away` inside another takes nothing."""
    lane, _ = lane_with()
    a, b = lane.steps("org-a"), lane.steps("org-b")
    await a.next()
    token = LONG_WORK.set(a)
    try:
        query_done = asyncio.Event()

        async def query() -> str:
            async with away():
                assert not a.holding
                async with away():  # the store's _aggregate around its _read: nothing more
                    pass
                assert not a.holding
                await query_done.wait()
            return "rows"

        running = asyncio.create_task(query())
        await turns()
        other = asyncio.create_task(b.next())
        await asyncio.wait_for(other, 5)  # org B's step runs while A's query is out
        assert b.holding and not a.holding
        query_done.set()
        await turns()
        assert not running.done()  # A waits for the turn back
        b.done()
        assert await asyncio.wait_for(running, 5) == "rows"
        assert a.holding
        with pytest.raises(RuntimeError):
            async with away():
                raise RuntimeError("the database went away")
        assert not a.holding  # not taken again: the request is ending
    finally:
        LONG_WORK.reset(token)
        a.close()
        b.close()
    assert not lane.held and lane.members == 0
