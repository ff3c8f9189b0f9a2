"""The lane: long work takes turns on the event loop, fairly by org, and gives way to short calls.

One server process runs every request on one event loop, so a tenant's long work (a batch of
100 invoice previews, a 1 MiB body decoded in chunks) delays every other tenant's short call by
the steps of it that are ready in the same loop turn. With 300 slow bodies, 1 MiB deposits,
batches of expensive reads and a flood all from one org (benchmark scenario 7), another org's
getBalance went from a p99 of ~1.5 ms to 28 ms and its p50 from 0.26 to 11 ms: every loop turn
held a step of each of the org's dozen long requests, and a short call crosses four or five
turns (its body read, its handler, its point read, its answer written).

So long work is cut into steps, and each step takes the lane's one turn:

- A step is a chunk of a large msgpack body being decoded (transport/codec.py), or one read
  entry of a ZAP batch (transport/answers.py: reads are the entries that may answer much).
  Writes of a batch, and single calls with ordinary bodies, never take a turn: they are the
  short calls the lane exists for, and a batch of writes is one group commit only if its
  entries start together.
- One step runs at a time. The next turn goes round the orgs waiting, in order (each org's
  own steps first come first served): an org with a hundred steps queued has one between
  every other org's, not a hundred before them.
- While short calls are being handled (or were, within RECENT), a turn is given only after a
  pause as long as the steps before it took (at least MIN_PAUSE of them, at most MAX_PAUSE), so
  long work has at most half the loop and a short call's turns pass between two steps instead
  of one step per turn. With no short call about, the next turn is given at once: on a quiet
  server long work runs as fast as before.

Steps give the turn back while they wait on the database or for a long-read slot
(loop_turn.away) and give way inside where they turn many rows into answers
(loop_turn.give_way, converted): held across a multi-second summary, the one turn stalled
every other long request for as long.

Measured in scenario 7 (README, Performance): org B's getBalance p99 with org A's abuse against
alone went from 10-22x to 1.43-1.95x at full size, while org A's own work still flowed.
"""
from __future__ import annotations

import asyncio
import collections
import time
from typing import Callable, Hashable

from ..loop_turn import next_loop_turn

MIN_PAUSE = 0.001
"""Steps shorter than this add up until they reach it, and then pause as long as they took: the
event loop's timers are as coarse as a millisecond (libuv, epoll), so a pause after each 50 us
step (a batch's getBalance entries) would have been a millisecond each."""
RECENT = 0.05
"""Seconds for which short calls seen in hand count as still coming: a short call is in hand for
a fraction of a millisecond, mostly between two steps' checks, while its first loop turns (its
bytes read, its handler started) come before it is counted at all."""
MAX_PAUSE = 0.02
"""Seconds at most between two steps while short calls are handled: a step measured longer
(one waiting on the database, say) does not stall long work for as long."""


class Lane:
    """The one turn of long work, for one event loop. `busy()` answers how many requests are
    being handled (the admission's shared slots in use): more than the lane's own means short
    calls are in hand."""

    def __init__(self, busy: Callable[[], int], clock: Callable[[], float] = time.monotonic):
        self.busy = busy
        self.clock = clock
        self.members = 0
        """Requests inside `steps()`: they are the long work among the busy ones."""
        self.held = False
        self.free_at = 0.0
        """When the next turn may be given (clock seconds): after a step, plus the pause."""
        self.owed = 0.0
        """Seconds of steps run while short calls were in hand, not yet paused for."""
        self.short_seen = -RECENT
        """When a short call was last seen in hand (clock seconds)."""
        self.waiting: dict[Hashable, collections.deque[asyncio.Future[None]]] = {}
        """Per org, its steps waiting, first come first served; the orgs in the order of their
        turn (a dict keeps insertion order: an org served goes to the back)."""
        self._timer: asyncio.TimerHandle | None = None

    def steps(self, owner: Hashable) -> Steps:
        return Steps(self, owner)

    async def take(self, owner: Hashable) -> None:
        """The turn, after at least one loop turn (what a step yields to others at the least)."""
        if not self.held and not self.waiting and self.clock() >= self.free_at:
            self.held = True
            try:
                await next_loop_turn()
            except BaseException:
                self.give(0.0)
                raise
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(owner, collections.deque()).append(waiter)
        self._schedule()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(0.0)  # handed the turn just as it was cancelled: pass it on
            else:
                queue = self.waiting.get(owner)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
                    if not queue:
                        del self.waiting[owner]
            raise

    def give(self, step: float) -> None:
        """The turn given back after a step of `step` seconds."""
        self.held = False
        self.free_at = 0.0
        now = self.clock()
        if self.busy() > self.members:
            self.short_seen = now
        if now - self.short_seen < RECENT:
            self.owed += step
            if self.owed >= MIN_PAUSE:
                self.free_at = now + min(self.owed, MAX_PAUSE)
                self.owed = 0.0
        else:
            self.owed = 0.0
        if self.waiting:
            self._schedule()

    def _schedule(self) -> None:
        if self.held or self._timer is not None:
            return  # the turn is given when it comes back, or when the timer fires
        delay = self.free_at - self.clock()
        if delay > 0:
            self._timer = asyncio.get_running_loop().call_later(delay, self._hand_on)
        else:
            self._hand_on()

    def _hand_on(self) -> None:
        self._timer = None
        while self.waiting and not self.held:
            owner = next(iter(self.waiting))
            queue = self.waiting.pop(owner)
            waiter = queue.popleft()
            if queue:
                self.waiting[owner] = queue  # to the back of the round
            if not waiter.done():
                self.held = True
                waiter.set_result(None)


class Steps:
    """One request's long work, from `Lane.steps` to `close()` (in a `finally`): `await next()`
    before each step gives back the turn of the step before, if any, and waits for the next;
    `done()` gives it back early (before waiting on something else)."""

    __slots__ = ("lane", "owner", "holding", "since")

    def __init__(self, lane: Lane, owner: Hashable):
        self.lane, self.owner = lane, owner
        self.holding = False
        self.since = 0.0
        lane.members += 1

    def close(self) -> None:
        self.done()
        self.lane.members -= 1

    def done(self) -> None:
        if self.holding:
            self.holding = False
            self.lane.give(self.lane.clock() - self.since)

    async def next(self) -> None:
        self.done()
        await self.lane.take(self.owner)
        self.holding = True
        self.since = self.lane.clock()
