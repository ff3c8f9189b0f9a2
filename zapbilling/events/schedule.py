"""When a failed delivery is tried again: exponential backoff with jitter, 8 attempts over more
than a day (the contract: at least 8 attempts spread over at least 24 hours).

    attempt   after the previous one (before jitter)   since the first (at least)
    1         -- (as soon as the event is dispatched)   0
    2         5 s                                       5 s
    3         30 s                                      35 s
    4         3 min                                     3 min 35 s
    5         18 min                                    21 min 35 s
    6         1 h 48 min                                2 h 9 min 35 s
    7         10 h 48 min                               12 h 57 min 35 s
    8         12 h                                      24 h 57 min 35 s

Each wait is 5 s times 6 to the power (attempt - 2), at most 12 h, then lengthened by a random
0-20% (jitter: deliveries that failed together, when a receiver went down, are not all retried
in the same second when it comes back). The jitter only lengthens, so the whole schedule spans
at least 24 h 57 min and at most about 30 h. After the 8th failed attempt the delivery is
`failed`. The first retry comes soon (5 s) because most failures are brief: a deploy, a
connection reset."""
from __future__ import annotations

import random

SECOND = 1_000_000
"""Microseconds (the store's unit of time)."""
ATTEMPTS = 8
FIRST_WAIT = 5 * SECOND
FACTOR = 6
LONGEST_WAIT = 12 * 3600 * SECOND
JITTER = 0.2


def base_wait(attempts_made: int) -> int:
    """The wait before the next attempt after `attempts_made` attempts (1..ATTEMPTS-1), before jitter."""
    return int(min(FIRST_WAIT * FACTOR ** (attempts_made - 1), LONGEST_WAIT))


def next_due(attempts_made: int, now: int, rng: random.Random | None = None) -> int | None:
    """When the next attempt is due after `attempts_made` failed attempts, or None: the
    schedule is used up and the delivery has failed."""
    if attempts_made >= ATTEMPTS:
        return None
    wait = base_wait(attempts_made)
    return now + wait + int(wait * JITTER * (rng or random).random())
