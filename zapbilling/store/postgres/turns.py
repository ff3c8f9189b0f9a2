"""Point reads of one event-loop turn answered by one statement.

On PostgreSQL every statement is a network round trip: asyncpg's protocol and the socket's
system calls in this process, a parse-bind-execute and a snapshot in PostgreSQL's. getBalance is
one such statement per request (its key checked in it). Under load, many requests reach their
read in the same turn of the event loop; a TurnBatch gathers them and sends one statement for
all of them (their arguments as arrays, read back as rows of `unnest`), so the round trip is
paid once per turn instead of once per request. A read alone in its turn runs the one-read
statement as before.

The batch's statement runs in a task of its own, not in the first caller's: a caller cancelled
(its connection gone at a shutdown) must not take the others' answers with it. A failed
statement fails every read of its batch, with the same exception.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class TurnBatch(Generic[A, R]):
    """`await batch.read(args)`: the answer of `one(args)`, or of `many([..., args, ...])` when
    other reads came in the same loop turn (`many` answers them in order)."""

    def __init__(self, one: Callable[[A], Awaitable[R]], many: Callable[[Sequence[A]], Awaitable[Sequence[R]]]):
        self._one, self._many = one, many
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()
        """The batches' tasks, kept so that none is collected while it runs (asyncio keeps only a
        weak reference)."""

    async def read(self, args: A) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        waiting = self._waiting
        waiting.append((args, answer))
        if len(waiting) == 1:
            # A new task's first step is scheduled behind the callbacks already ready in this
            # turn: the requests they run that read too join this batch before it is sent.
            task = loop.create_task(self._run())
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return await answer

    async def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        try:
            if len(batch) == 1:
                answers: Sequence[R] = [await self._one(batch[0][0])]
            else:
                answers = await self._many([args for args, _ in batch])
        except BaseException as exc:
            for _, answer in batch:
                if not answer.done():
                    if isinstance(exc, asyncio.CancelledError):
                        answer.cancel()
                    else:
                        answer.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, answer), value in zip(batch, answers, strict=True):
            if not answer.done():  # its caller was cancelled meanwhile
                answer.set_result(value)
