"""One turn of the event loop, for code that must let other tasks run in the middle of its work;
and giving way inside long work (`give_way`), which may wait longer."""
from __future__ import annotations

import contextlib
import types
from contextvars import ContextVar
from typing import AsyncIterator, Awaitable, Callable, Generator, Protocol, Sequence, TypeVar


@types.coroutine
def next_loop_turn() -> Generator[None, None, None]:
    """`asyncio.sleep(0)` without the `sleep` coroutine around it (this is what it awaits): a
    bare yield, which the task answers by scheduling its next step in the next loop turn. By
    callgrind, per request through app.py's two route wrappers and a trivial handler, +1.07k
    instructions with `asyncio.sleep(0)` and -0.42k with this, against the single wrapper the
    two replaced (getBalance: ~320k in all)."""
    yield


Step = Callable[[], Awaitable[None]]
"""How a piece of long work waits before its next piece: a loop turn (`next_loop_turn`), or a turn
of long work (transport/lane.py `Steps.next`), which may wait longer and fairly by org."""


class Turns(Protocol):
    """A request's turns of long work (transport/lane.py `Steps`), as the layers below see them."""

    holding: bool

    async def next(self) -> None: ...

    def done(self) -> None: ...


LONG_WORK: ContextVar[Turns | None] = ContextVar("zapbilling_long_work", default=None)
"""Set while a call runs as a step of long work (a ZAP batch's read entry: transport/lane.py,
transport/answers.py). Unset for every other call."""


async def give_way() -> None:
    """Inside long work, end this step and wait for the next turn (which may come after a pause
    for other tenants' short calls); anywhere else, nothing: a single call's work stays as it
    was. Where a long read turns many rows into answers (`converted`), the invoice preview's
    lines: a preview over 1,000 meters held the loop for ~2.4 ms turning its rules into rows,
    ~3.9 ms for its usage and ~1.9 ms pricing its lines, each in one piece."""
    turns = LONG_WORK.get()
    if turns is not None:
        await turns.next()


@contextlib.asynccontextmanager
async def away() -> AsyncIterator[None]:
    """Inside long work, the turn is given back while the block waits on something else (the
    database, a slot of the store's long reads), and taken again after it (not if it raised).
    Held across such waits, one org's unique_count summary over a million events (seconds in a
    reader thread) held every other org's long work for as long: benchmark scenario 7 at full
    size saw org A's own batches and bodies stall 7-15 s behind it."""
    turns = LONG_WORK.get()
    if turns is None or not turns.holding:
        yield
        return
    turns.done()
    yield
    await turns.next()


R = TypeVar("R")
T = TypeVar("T")


async def converted(rows: Sequence[R], make: Callable[[R], T], per_step: int) -> list[T]:
    """`[make(r) for r in rows]`, giving way every `per_step` rows inside long work."""
    if len(rows) <= per_step or LONG_WORK.get() is None:
        return [make(r) for r in rows]
    out: list[T] = []
    for start in range(0, len(rows), per_step):
        if start:
            await give_way()
        out.extend(make(r) for r in rows[start:start + per_step])
    return out
