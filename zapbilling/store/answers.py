"""A write's answer as its idempotency record keeps it, the same on every backend: what a
replay answers is exactly what the first call did."""
from __future__ import annotations

import json
import time
import zlib
from typing import Any


COMPRESS_FROM = 1024
"""Stored answers of at least this many characters (as compact JSON) are compressed."""
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_compact_ascii = json.JSONEncoder(separators=(",", ":")).encode


def stored_answer(result: Any) -> str | bytes:
    """A write's answer as its idempotency record keeps it: compact JSON text, or from 1 KiB on
    compact UTF-8 JSON compressed by zlib (a BLOB: the column's TEXT affinity leaves BLOBs
    alone, so no migration, and records written before read as they were).

    Why: a keyed write's answer echoes what it stored (a deposit's metadata and tags), so the
    record doubled the ledger's bytes, and the old `json.dumps` even tripled non-ASCII text (an
    emoji's 4 UTF-8 bytes became a 12-byte `\\ud83c\\udf00`). The largest legal deposit
    (metadata of 16 KiB as compact JSON in 64 keys, tags of 1,000 characters: the bounds in
    limits.py and billing/validation.py) keeps, in bytes:

        metadata and tags of           before (json.dumps)   compact UTF-8   stored now
        English words (ASCII)               17,744              17,598          6,386
        random base64 (ASCII)               17,744              17,598         13,363
        emoji (4 UTF-8 bytes each)          60,349              20,595         10,169

    So a record is never more than the answer's compact UTF-8 size (+0.03% where zlib cannot
    shrink it): ~21 KB for the largest legal deposit, usually much less, where each of the
    finding's deposits kept ~4 MB here and as much in the ledger (1 MiB of empty msgpack maps,
    which the metadata bound refuses now; as JSON they shrink ~300x). Cost, on the writer thread, for such a deposit (timeit,
    shared machine): ~65 us to encode as before, ~250-400 us more to compress at level 1
    (level 6: a few percent smaller, slower still). Answers under 1 KiB, recordUsage's among
    them, are stored as compact JSON text without compressing: the hot path pays nothing more.
    A replay decompresses and parses the same JSON, so it answers exactly what the first call
    did."""
    text = _compact(result)
    if len(text) >= COMPRESS_FROM:
        return zlib.compress(text.encode("utf-8", "surrogatepass"), 1)
    return text if text.isascii() else _compact_ascii(result)  # escaped: SQLite text must be valid UTF-8


def replayed_answer(response: str | bytes) -> Any:
    if isinstance(response, bytes):
        return json.loads(zlib.decompress(response).decode("utf-8", "surrogatepass"))
    return json.loads(response)


class PurgeHorizon:
    """Which stored answers a purge may drop, on every backend: those created before
    `older_than` (the caller's clock less the time keys are kept), except those a forward jump
    of that clock would drop early. The horizon moves on at most as fast as real time (the
    monotonic clock) since this process's last purge, so a clock stepped two days ahead does
    not drop keys a client may still retry with (the contract keeps them at least 24 hours). A
    backward jump only purges less. The first purge of a process has nothing to compare with
    and takes the clock's word."""

    def __init__(self) -> None:
        self._last: tuple[int, float] | None = None  # the last purge's horizon, and time.monotonic() then

    def clamp(self, older_than: int) -> int:
        mono = time.monotonic()
        if self._last is not None:
            horizon, then = self._last
            older_than = min(older_than, horizon + int((mono - then) * 1_000_000))
        self._last = (older_than, mono)
        return older_than
