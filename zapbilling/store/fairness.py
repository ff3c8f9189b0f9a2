"""Taking turns fairly by tenant, for any backend's long reads."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Hashable


class FairSlots:
    """At most `slots` holders at once. A slot that frees goes to the waiting owner (a tenant)
    that holds the fewest slots now, the longest-waiting first among equals: an owner with a
    hundred long reads queued gets no more than its share while another owner waits, and a
    newcomer waits only for the first slot to free, not for the whole queue before it."""

    def __init__(self, slots: int):
        self._free = slots
        self._held: dict[Hashable, int] = {}
        self._waiting: list[tuple[Hashable, asyncio.Future[None]]] = []  # arrival order

    @contextlib.asynccontextmanager
    async def slot(self, owner: Hashable) -> AsyncIterator[None]:
        await self._acquire(owner)
        try:
            yield
        finally:
            self._release(owner)

    async def _acquire(self, owner: Hashable) -> None:
        if self._free > 0 and not self._waiting:
            self._take(owner)
            return
        entry = (owner, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            if entry in self._waiting:
                self._waiting.remove(entry)
            elif entry[1].done() and not entry[1].cancelled():
                self._release(owner)  # granted as the task was cancelled: hand it on
            raise

    def _take(self, owner: Hashable) -> None:
        self._free -= 1
        self._held[owner] = self._held.get(owner, 0) + 1

    def _release(self, owner: Hashable) -> None:
        held = self._held[owner] - 1
        if held:
            self._held[owner] = held
        else:
            del self._held[owner]
        self._free += 1
        while self._free > 0 and self._waiting:
            # A linear look: the waiting list is bounded by the requests in flight (a few hundred).
            i = min(range(len(self._waiting)), key=lambda i: (self._held.get(self._waiting[i][0], 0), i))
            owner, fut = self._waiting.pop(i)
            if fut.cancelled():
                continue
            self._take(owner)
            fut.set_result(None)
