"""Point reads, and writes that commit by themselves, made at nearly the same time: one
statement for all of them.

On PostgreSQL every statement is a network round trip: asyncpg's protocol and the socket's
system calls in this process, a parse-bind-execute and a snapshot in PostgreSQL's. getBalance is
one such statement per request (its key checked in it). Under load, many requests reach their
read at nearly the same time; a TurnBatch gathers them and sends one statement for all of them
(their arguments as arrays, read back as rows of `unnest`), so the round trip is paid once per
batch instead of once per request (getBalance on PostgreSQL, bench scenario 1: 7,954 -> 14,855
req/s, server CPU 118 -> 63 us and PostgreSQL's 55 -> 12 us per request). A read alone runs the
one-read statement as before. The usual ledger write (recordUsage, a deposit) is batched the same
way (ledger.py, `ledger_append_rows`): one statement and one commit for the writes of a round trip.

One batch is under way at a time; the reads that arrive meanwhile make the next one. The
batches are sent by a task of their own, not by a caller: a caller cancelled (its connection
gone at a shutdown) must not take the others' answers with it. That task runs in a context of
its own, not the first caller's: a caller's context variables (its long work's turn, lane.py)
must not ride along with the calls of others that its batches carry.

A statement the database refuses for what one call holds (ONE_CALLS_FAULT: a value it cannot
store, such as a tag too long for its index, an overflow in one account's sum, a broken
constraint) would fail every call of the batch, other tenants' too; the batch's calls are then
made one by one, each answered as if it had come alone (nothing of the refused statement was
written: it commits by itself or not at all). Any other failure (the connection lost, the
database shutting down, a statement timeout) fails every call of the batch with the same
exception, and the next batch is sent all the same.
"""
from __future__ import annotations

import asyncio
import contextvars
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

import asyncpg

A = TypeVar("A")
R = TypeVar("R")

ONE_CALLS_FAULT = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError)
"""What the database answers a statement for what is in it (SQLSTATE classes 22, 23 and 54):
in a batch, likely one call's doing."""


class TurnBatch(Generic[A, R]):
    """`await batch.call(args)`: the answer of `one(args)`, or of `many([..., args, ...])` when
    other calls came with it (`many` answers them in order)."""

    def __init__(self, one: Callable[[A], Awaitable[R]], many: Callable[[Sequence[A]], Awaitable[Sequence[R]]]):
        self._one, self._many = one, many
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None
        """The task sending the batches while there are reads waiting (a strong reference:
        asyncio keeps only a weak one)."""

    async def call(self, args: A) -> R:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append((args, answer))
        if self._sender is None:
            # A new task's first step is scheduled behind the callbacks already ready in this
            # turn: the requests they run that read too join this batch before it is sent.
            self._sender = loop.create_task(self._send(), context=contextvars.Context())
        return await answer

    async def _send(self) -> None:
        """Send what waits, one batch at a time: the reads that arrive while a batch is under
        way wait for it and go out together next, so a batch holds what arrived in one round
        trip. Several batches at once (one per loop turn) made batches of a few reads, and
        the server CPU per request grew as the load was split over more servers."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._answer(batch)
        except asyncio.CancelledError:  # the loop is closing: nothing will send the rest
            for _, answer in self._waiting:
                answer.cancel()
            self._waiting = []
            raise
        finally:
            self._sender = None

    async def _answer(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            if len(batch) == 1:
                answers: Sequence[R] = [await self._one(batch[0][0])]
            else:
                try:
                    answers = await self._many([args for args, _ in batch])
                except ONE_CALLS_FAULT:
                    await self._each_alone(batch)
                    return
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            for _, answer in batch:
                if answer.done():
                    continue
                if cancelled:
                    answer.cancel()
                else:
                    answer.set_exception(exc)
            if cancelled:
                raise
            return
        for (_, answer), value in zip(batch, answers, strict=True):
            if not answer.done():  # its caller was cancelled meanwhile
                answer.set_result(value)

    async def _each_alone(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        """Each call of a refused batch made by itself: the one at fault hears why, the others
        get their answers. In turn, not at once: a refused batch is rare, and its calls are
        likely to be of one account (they would wait on its lock anyway)."""
        for args, answer in batch:
            if answer.done():  # its caller was cancelled meanwhile
                continue
            try:
                value = await self._one(args)
            except Exception as exc:  # not CancelledError: that ends the sender (_answer cancels the rest)
                if not answer.done():
                    answer.set_exception(exc)
                continue
            if not answer.done():
                answer.set_result(value)
