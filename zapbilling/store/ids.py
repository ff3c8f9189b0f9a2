"""Row ids and API-key digests, the same on every backend."""
from __future__ import annotations

import hashlib
import os
import secrets
import time


def new_id(prefix: str) -> str:
    """`<prefix>_` and 24 hex digits: the creation millisecond (11 digits) then 52 random bits.
    Ids made later sort later, so the UNIQUE index on `id` grows at its right edge: a commit of
    many rows dirties one or two of its pages instead of one random page per row (measured: a
    batch of recordUsage writes cost ~25% less). The random part keeps ids of one millisecond
    unguessable and distinct; the UNIQUE constraint stays the guarantee.

    The random parts come from the kernel's source a few hundred at a time (`_refilled`) and
    the millisecond's digits are made once per millisecond: `secrets.randbits` read the source
    for every id (a system call, and random.SystemRandom's Python around it), and the whole id
    cost 1.59 us against 0.42 us now (timeit); recordUsage makes two (its row's and its meter
    event's), 4.1% of its server's samples under bench.profile."""
    ms = time.time_ns() // 1_000_000
    clock = _clock
    if clock[0] != ms:
        clock = _set_clock(ms)
    try:
        part = _parts.pop()
    except IndexError:
        part = _refilled()
    return f"{prefix}_{clock[1]}{part}"


_clock = (0, "")
"""The last millisecond an id was made in, and its 11 hex digits: one tuple, replaced whole, so a
thread reading it never sees the digits of another millisecond."""


def _set_clock(ms: int) -> tuple[int, str]:
    global _clock
    _clock = clock = (ms, f"{ms:011x}")
    return clock  # not `_clock`, which another thread may have replaced by now


_PARTS_PER_READ = 512
_parts: list[str] = []
"""Random parts (13 hex digits, 52 bits) not yet used. Shared by the loop's thread and the
writer's: `list.pop` is atomic under the GIL, so each part goes to one id only, and two threads
finding it empty at once only both refill it. Emptied in a forked child, which must not make the
parent's ids (`--workers` share one file and one UNIQUE index)."""


def _refilled() -> str:
    """A random part, after reading more from the kernel's source."""
    bits = secrets.token_hex(7 * _PARTS_PER_READ)  # 14 hex digits a part, of which 13 are used
    parts = [bits[i:i + 13] for i in range(0, 14 * _PARTS_PER_READ, 14)]
    mine = parts.pop()  # taken before the others are shared: another thread cannot empty them first
    _parts.extend(parts)
    return mine


os.register_at_fork(after_in_child=_parts.clear)


def new_ids(prefix: str, n: int) -> list[str]:
    """`n` ids of `new_id`'s shape for one batch: one clock reading and one read of the kernel's
    random source for all of them, where `new_id` makes each (a meter-event batch of 100:
    ~8% of recordMeterEvents' samples went to new_id, bench.profile). The random parts are
    distinct with overwhelming likelihood, and the UNIQUE index still decides."""
    head = f"{prefix}_{time.time_ns() // 1_000_000:011x}"
    bits = secrets.token_hex(7 * n)  # 14 hex digits per id, of which 13 (52 bits) are used
    return [head + bits[i:i + 13] for i in range(0, 14 * n, 14)]


def row_event_id(row_id: str) -> str:
    """The id of a ledger row's event (deposit.created, refund.created, usage.recorded,
    credit.expired): `evt_` and the row's own 24 digits. A row has one event at most (one
    event per change), so the id is as unique as the row's (on SQLite the id's unique index is
    what keeps a usage.recorded event one per row: migration 15), sorts with it, and costs
    nothing to make: a fresh id (the clock, 52 random bits, the formatting) was
    7k of the ~80k instructions the outbox added to recordUsage with an endpoint on
    usage.recorded (callgrind, SQLite: 728k -> 721k per request)."""
    return "evt_" + row_id.partition("_")[2]


def key_hash(secret: str) -> str:
    """What a store keeps of an API key: its SHA-256 digest, never the key itself."""
    return hashlib.sha256(secret.encode()).hexdigest()
