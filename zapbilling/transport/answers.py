"""A ZAP batch's answer, bounded in size (Limits.answer_bytes).

Before, a batch of 100 `listMeters` (a 3.8 KB request) answered 110 MB and took the server to
1.1 GB: each entry's answer was built, all of them were kept, and the whole list was encoded at
the end. Now each entry's answer is encoded as soon as it is ready (its objects freed at once)
and the pieces are joined into the array, and once the encoded answers have passed the bound,
the entries after it are **not run**: each answers `payload_too_large` ("the batch's answers
passed the N-byte bound: this entry was not run"), with its own id. Not running them, rather
than running them and dropping their answers, is what a caller can act on: an entry that
changes data must never be applied and have its answer thrown away, and a read past the bound
would cost the CPU and memory the bound is there to save. The entry that crosses the bound is
answered whole, so no single answer is ever refused, however large.

To know an entry is past the bound before it runs, the entries that may answer much (reads:
lists, pages, summaries, previews) run one after another, in order, each after the answers
before it are counted. Writes answer about what they were sent (one row, one event's id), so
they still start at once, concurrently, as every entry did before: a batch of 100 recordUsage
is still one group commit. A write waits only for the reads before it in the batch; the reads
after it do not wait for it. One batch thus holds at most one read connection at a time, which
also keeps a batch of expensive reads from taking every reader from the other tenants.

A batch answer is then at most the bound, plus one entry, plus the answers of the writes under
way when the bound was passed. Encoding each entry apart and joining costs about the same as
encoding the list at once (timeit, 100 getBalance answers: ~80 us either way in msgpack, JSON
~1.1x), so the ordinary batch pays nothing for it.
"""
from __future__ import annotations

import asyncio
import io
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from ..errors import ApiError, PayloadTooLarge
from ..registry import Command
from ..loop_turn import LONG_WORK, next_loop_turn
from .codec import Codec
from .lane import Steps

Run = Callable[[Any, "ApiError | None"], Awaitable[tuple[dict[str, Any], int]]]
"""run(entry, refusal): the entry's answer and status. With a refusal, the envelope is checked
(so that its id is echoed, or its own error given) and the refusal answered: nothing is run."""


def passed(bound: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the batch's answers passed the {bound}-byte bound: this entry was not run; send it again in another request")


def writes(entry: Any, commands: Mapping[str, Command]) -> bool:
    """Whether the entry names a method that changes data (a malformed entry does not)."""
    if type(entry) is not dict:
        return False
    method = entry.get("method")
    command = commands.get(method) if type(method) is str else None
    return command is not None and command.mutates


async def answer_batch(entries: list[Any], run: Run, commands: Mapping[str, Command], codec: Codec, bound: int,
                       steps: Steps) -> web.Response:
    """The batch's answer: an array of each entry's answer, in order, bounded as the module says.
    Each read is a step of long work (transport/lane.py): it runs in its turn."""
    pieces = [b""] * len(entries)
    total = 0

    async def answer(i: int, entry: Any, refusal: ApiError | None = None) -> None:
        nonlocal total
        value, _ = await run(entry, refusal)
        pieces[i] = piece = codec.encode(value)
        total += len(piece)

    under_way: list[asyncio.Future[None]] = []
    refusal: ApiError | None = None
    try:
        for i, entry in enumerate(entries):
            if total > bound:
                refusal = refusal or passed(bound)
                await answer(i, entry, refusal)
            elif writes(entry, commands):
                under_way.append(asyncio.ensure_future(answer(i, entry)))
            else:
                await steps.next()
                long_work = LONG_WORK.set(steps)  # the read gives way inside too (loop_turn.give_way, away)
                try:
                    await answer(i, entry)
                finally:
                    LONG_WORK.reset(long_work)
        steps.done()
        if under_way:
            await asyncio.gather(*under_way)
    except BaseException:  # as gather did: a cancelled batch cancels its writes still waiting
        for task in under_way:
            task.cancel()
        raise
    body = codec.encode_array(pieces) if total <= JOIN_STEP else await _joined_in_turns(codec, pieces)
    return web.Response(body=body, headers={"Content-Type": codec.content_type})


JOIN_STEP = 1 << 20
"""Bytes of a batch's answer copied per loop turn when its pieces are joined. Joined at once, a
16 MB answer (the default bound: a batch of listTransactions pages of large metadata) held the
loop 3.7 ms; a MiB is ~0.25 ms of copying."""


async def _joined_in_turns(codec: Codec, pieces: list[bytes]) -> io.BytesIO:
    """`codec.encode_array(pieces)`, copied a JOIN_STEP at a time, a loop turn between, into a
    BytesIO: aiohttp (3.12 on) sends a BytesIO body 64 KiB at a time, a loop turn between, where a
    bytes body goes to the socket in one call (one send() of as much as the socket's buffer
    takes, several MB on loopback: milliseconds of copying in the kernel on the loop's thread)."""
    head, between, tail = codec.array_frame(len(pieces))
    out = io.BytesIO()
    out.write(head)
    since = 0
    for i, piece in enumerate(pieces):
        if i:
            out.write(between)
        out.write(piece)
        since += len(piece)
        if since >= JOIN_STEP:
            await next_loop_turn()
            since = 0
    out.write(tail)
    out.seek(0)
    return out
